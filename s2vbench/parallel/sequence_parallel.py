"""Context-parallel attention: Ulysses inside a node, ring across, on a sequence padded once at its global end.

Rank (ring i, ulysses j) of a context-parallel group holds the tokens of chunk ``i * u + j`` of the padded
sequence. Ulysses gathers the u chunks of ring group i (heads split u ways); ring attention then circulates
those u-chunk blocks between the r ring ranks. Padding sits at the global end, so every ring block knows how
many of its keys are real, and padded keys are never attended after any all-to-all or in any ring step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from .ring import ring_attention
from .ulysses import head_to_seq, seq_to_head


@dataclass
class CPGroups:
    """The process groups of one context-parallel group."""

    ulysses: dist.ProcessGroup | None
    """Inner group (size u); None when u = 1."""
    ring: dist.ProcessGroup | None
    """Outer group (size r); None when r = 1."""
    ulysses_size: int
    ring_size: int

    @property
    def size(self) -> int:
        return self.ulysses_size * self.ring_size

    def cp_rank(self) -> int:
        """This rank's chunk index: ring rank * u + ulysses rank."""
        i = dist.get_rank(self.ring) if self.ring is not None else 0
        j = dist.get_rank(self.ulysses) if self.ulysses is not None else 0
        return i * self.ulysses_size + j


def padded_length(total: int, cp_size: int) -> int:
    return -(-total // cp_size) * cp_size


def ring_chunk_valid(valid_len: int, chunk_len: int, ring_size: int) -> list[int]:
    """Real keys in each ring chunk of ``chunk_len`` tokens when the first ``valid_len`` tokens are real."""
    return [max(0, min(chunk_len, valid_len - c * chunk_len)) for c in range(ring_size)]


def context_parallel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: CPGroups, valid_len: int,
                               backend: str = "torch", trace: list | None = None
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of this rank's query chunk over the whole (padded) sequence.

    q, k, v [B, L, H, D] hold this rank's L tokens; the first ``valid_len`` tokens of the global sequence are
    real. Returns (out [B, L, H, D], lse [B, H / u, u L] of this rank's heads after the all-to-all)."""
    if groups.ulysses is not None:
        q, k, v = (seq_to_head(t, groups.ulysses) for t in (q, k, v))
    chunk = q.shape[1]
    valid = ring_chunk_valid(valid_len, chunk, groups.ring_size)
    out, lse = ring_attention(q, k, v, groups.ring, valid, backend, trace)
    if groups.ulysses is not None:
        out = head_to_seq(out, groups.ulysses)
    return out, lse


__all__ = ["CPGroups", "context_parallel_attention", "padded_length", "ring_chunk_valid"]
