"""Context parallelism for the Wan-S2V model, plugged into its attention seam and stage methods.

Every rank of a context-parallel group runs ``model.prepare`` on the same inputs (embeddings, the audio
encoder and RoPE tables are replicated and cheap), keeps its chunk of the ``[noisy | ref | motion]`` sequence
padded once at its global end, and runs the blocks on that window. Self-attention goes through Ulysses/ring;
text cross-attention and the audio injection are per token and stay local: each rank maps its noisy tokens to
their global latent frame and uses the replicated audio tokens, so injection sends no bytes, even when a
frame is split across ranks.
"""

from __future__ import annotations

import itertools
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..model import WanS2V, register_attention_backend
from ..model.model import PreparedSequence, SequenceWindow
from .comm import _record, nbytes
from .sequence_parallel import CPAttention, CPGroups, context_parallel_attention, padded_length


def shard_window(total: int, cp_size: int, cp_rank: int) -> tuple[int, int, int]:
    """(padded length, window start, window length) of a sequence padded once at its global end."""
    padded = padded_length(total, cp_size)
    length = padded // cp_size
    return padded, cp_rank * length, length


_IDS = itertools.count()


class ContextParallelAttention:
    """The self-attention backend of one context-parallel group, registered in the model's seam.

    The real length of the current sequence is kept as state (set by each forward), so activation
    checkpointing's recompute during backward sees the same length."""

    def __init__(self, groups: CPGroups, local_backend: str = "torch", trace: list | None = None):
        self.groups = groups
        self.cp = CPAttention(groups, local_backend, trace)
        self.valid_len: int | None = None
        self.name = f"context_parallel_{next(_IDS)}"
        register_attention_backend(self.name, self)

    def __call__(self, q, k, v, kv_lens=None):
        if self.valid_len is None:
            raise RuntimeError("context-parallel attention called outside a context-parallel forward")
        if kv_lens is not None:
            raise ValueError("context-parallel self-attention masks padding itself; pass kv_lens=None")
        return context_parallel_attention(q, k, v, self.cp, self.valid_len)[0]


class ContextParallelWindow:
    """The model's ``sequence_window`` under context parallelism: this rank's chunk of the padded sequence."""

    def __init__(self, attn: ContextParallelAttention):
        self.attn = attn

    def __call__(self, prep: PreparedSequence) -> SequenceWindow:
        lay = prep.layout
        _, start, length = shard_window(lay.total, self.attn.groups.size, self.attn.groups.cp_rank())
        real = slice(min(start, lay.total), min(start + length, lay.total))
        # Slice, then pad only this rank's tail: padding the whole sequence first would copy all of it (and
        # its gradient) on every rank, traffic that grows with the clip, not with the rank's share.
        pad = length - (real.stop - real.start)

        def window(t: torch.Tensor, dim: int) -> torch.Tensor:
            t = t.narrow(dim, real.start, real.stop - real.start)
            return F.pad(t, (0, 0) * (t.dim() - 1 - dim) + (0, pad)) if pad else t

        self.attn.valid_len = lay.total
        tokens = window(prep.tokens, 1)
        if tokens._base is not None:  # a view would keep the whole sequence's storage alive until backward
            tokens = tokens.clone()
        return SequenceWindow(tokens=tokens, cos=window(prep.cos, 0), sin=window(prep.sin, 0),
                              first_token=start, num_noisy=max(0, min(length, lay.noisy - start)))


def apply_context_parallel(model: WanS2V, groups: CPGroups, local_backend: str = "torch") -> ContextParallelAttention:
    """Route every block's self-attention through Ulysses/ring and run the blocks on this rank's window
    (text cross-attention and the audio injection stay local)."""
    attn = ContextParallelAttention(groups, local_backend)
    for block in model.blocks:
        block.self_attn.attn_backend = attn.name
    model.sequence_window = ContextParallelWindow(attn)
    return attn


def gather_noisy_tokens(local: torch.Tensor, window: SequenceWindow, noisy: int, cp_size: int,
                        group: dist.ProcessGroup) -> torch.Tensor:
    """All ranks' noisy-token outputs [B, noisy, C], in order (inference path; not differentiable)."""
    length = window.tokens.shape[1]
    padded = F.pad(local, (0, 0, 0, length - local.shape[1])).contiguous()
    parts = [torch.empty_like(padded) for _ in range(cp_size)]
    start = time.perf_counter()
    dist.all_gather(parts, padded, group=group)
    moved = nbytes(padded) * (cp_size - 1)
    _record("all_gather", moved, moved, time.perf_counter() - start)
    return torch.cat(parts, dim=1)[:, :noisy]


__all__ = ["ContextParallelAttention", "ContextParallelWindow", "apply_context_parallel", "gather_noisy_tokens",
           "shard_window"]
