"""Context-parallel attention: Ulysses inside a node, ring across, on a sequence padded once at its global end.

Rank (ring i, ulysses j) of a context-parallel group holds the tokens of chunk ``i * u + j`` of the padded
sequence. Ulysses gathers the u chunks of ring group i (heads split u ways); ring attention then circulates
those u-chunk blocks between the r ring ranks. Padding sits at the global end, so every ring block knows how
many of its keys are real, and padded keys are never attended after any all-to-all or in any ring step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.distributed as dist

from .comm import all_to_all
from .ring import ring_backward, ring_forward


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


class CPAttention:
    """One context-parallel group's attention settings, registered under a key the custom op can carry."""

    _registry: ClassVar[dict[str, CPAttention]] = {}

    def __init__(self, groups: CPGroups, backend: str = "torch", trace: list | None = None):
        self.groups = groups
        self.backend = backend
        self.trace = trace
        self.key = f"cp{len(CPAttention._registry)}"
        CPAttention._registry[self.key] = self

    @classmethod
    def lookup(cls, key: str) -> CPAttention:
        return cls._registry[key]


def _to_heads(t: torch.Tensor, groups: CPGroups) -> torch.Tensor:
    return all_to_all(t, 2, 1, groups.ulysses) if groups.ulysses is not None else t


def _to_seq(t: torch.Tensor, groups: CPGroups) -> torch.Tensor:
    return all_to_all(t, 1, 2, groups.ulysses) if groups.ulysses is not None else t


@torch.library.custom_op("s2vbench::cp_attention", mutates_args=())
def cp_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key: str, valid_len: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, lse, q_h, k_h, v_h, out_h): the output, and what the backward needs after the all-to-all (empty
    when there is no Ulysses group). One opaque op, so activation checkpointing can keep its outputs and
    never re-run its communication."""
    cp = CPAttention.lookup(key)
    g = cp.groups
    qh, kh, vh = (_to_heads(t, g) for t in (q, k, v))
    valid = ring_chunk_valid(valid_len, qh.shape[1], g.ring_size)
    out_h, lse = ring_forward(qh, kh, vh, g.ring, valid, cp.backend, cp.trace)
    # Contiguous, as the fake implementation promises: torch.compile's generated code asserts the strides (the
    # CPU flash kernel's lse, for one, is a transposed view).
    out_h, lse = out_h.contiguous(), lse.contiguous()
    if g.ulysses is None:
        empty = q.new_empty(0)
        return out_h, lse, empty, empty.clone(), empty.clone(), empty.clone()
    return _to_seq(out_h, g).contiguous(), lse, qh.contiguous(), kh.contiguous(), vh.contiguous(), out_h


@cp_attention_op.register_fake
def _(q, k, v, key, valid_len):
    g = CPAttention.lookup(key).groups
    b, n, h, d = q.shape
    u = g.ulysses_size
    lse = q.new_empty(b, h // u, n * u, dtype=torch.promote_types(q.dtype, torch.float32))
    if u == 1:
        return q.new_empty(q.shape), lse, *(q.new_empty(0) for _ in range(4))
    heads = q.new_empty(b, n * u, h // u, d)
    return q.new_empty(q.shape), lse, heads, heads.clone(), heads.clone(), heads.clone()


def _setup(ctx, inputs, output):
    q, k, v, key, valid_len = inputs
    out, lse, qh, kh, vh, out_h = output
    ctx.save_for_backward(q, k, v, out, lse, qh, kh, vh, out_h)
    ctx.key, ctx.valid_len = key, valid_len


@torch.library.custom_op("s2vbench::cp_attention_backward", mutates_args=())
def cp_attention_backward_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                             lse: torch.Tensor, qh: torch.Tensor, kh: torch.Tensor, vh: torch.Tensor,
                             out_h: torch.Tensor, key: str, valid_len: int
                             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of ``cp_attention``. An opaque op of its own, so that torch.compile (AOTAutograd traces a
    custom op's backward into the backward graph) never traces the collectives or captures a process group."""
    cp = CPAttention.lookup(key)
    g = cp.groups
    if g.ulysses is None:
        qh, kh, vh, out_h = q, k, v, out
    valid = ring_chunk_valid(valid_len, qh.shape[1], g.ring_size)
    grads = ring_backward(_to_heads(dout.contiguous(), g), qh, kh, vh, out_h, lse, g.ring, valid, cp.backend, cp.trace)
    dq, dk, dv = (_to_seq(t, g).contiguous() for t in grads)
    return dq, dk, dv


@cp_attention_backward_op.register_fake
def _(dout, q, k, v, out, lse, qh, kh, vh, out_h, key, valid_len):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _backward(ctx, dout, *_unused):
    q, k, v, out, lse, qh, kh, vh, out_h = ctx.saved_tensors
    dq, dk, dv = cp_attention_backward_op(dout, q, k, v, out, lse, qh, kh, vh, out_h, ctx.key, ctx.valid_len)
    return dq, dk, dv, None, None


cp_attention_op.register_autograd(_backward, setup_context=_setup)


def context_parallel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cp: CPAttention, valid_len: int
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of this rank's query chunk over the whole (padded) sequence.

    q, k, v [B, L, H, D] hold this rank's L tokens; the first ``valid_len`` tokens of the global sequence are
    real. Returns (out [B, L, H, D], lse [B, H / u, u L] of this rank's heads after the all-to-all)."""
    out, lse = cp_attention_op(q, k, v, cp.key, valid_len)[:2]
    return out, lse


__all__ = ["CPAttention", "CPGroups", "context_parallel_attention", "cp_attention_backward_op", "cp_attention_op",
           "padded_length",
           "ring_chunk_valid"]
