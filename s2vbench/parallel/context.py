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
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..model import WanS2V, register_attention_backend
from ..model.model import PreparedSequence
from .comm import _record, nbytes
from .sequence_parallel import CPAttention, CPGroups, context_parallel_attention, padded_length


@dataclass(frozen=True)
class SequenceShard:
    """This rank's window of the padded sequence."""

    total: int
    """Real tokens of the sequence."""
    padded: int
    """Tokens after padding to a multiple of the context-parallel size."""
    start: int
    """Global index of the window's first token."""
    length: int
    """Tokens in the window (padded / cp)."""
    num_noisy: int
    """Noisy-video tokens at the start of the window."""


def shard_sequence(total: int, noisy: int, cp_size: int, cp_rank: int) -> SequenceShard:
    padded = padded_length(total, cp_size)
    length = padded // cp_size
    start = cp_rank * length
    return SequenceShard(total, padded, start, length, max(0, min(length, noisy - start)))


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


def use_context_parallel_attention(model: WanS2V, attn: ContextParallelAttention) -> None:
    """Route every block's self-attention through ``attn`` (cross-attention stays local)."""
    for block in model.blocks:
        block.self_attn.attn_backend = attn.name
    model._cp_attention = attn


def cp_forward_tokens(model: WanS2V, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, ref_latents: torch.Tensor,
                      audio_input: torch.Tensor, motion_latents: torch.Tensor | None = None,
                      cond_states: torch.Tensor | None = None) -> tuple[torch.Tensor, PreparedSequence, SequenceShard]:
    """This rank's velocity tokens [B, shard.num_noisy, patch values] for noisy tokens ``shard.start ...``."""
    attn: ContextParallelAttention = model._cp_attention
    prep = model.prepare(x, t, context, ref_latents, audio_input, motion_latents, cond_states)
    lay = prep.layout
    shard = shard_sequence(lay.total, lay.noisy, attn.groups.size, attn.groups.cp_rank())
    window = slice(shard.start, shard.start + shard.length)
    pad = shard.padded - lay.total
    tokens = F.pad(prep.tokens, (0, 0, 0, pad))[:, window]
    cos = F.pad(prep.cos, (0, 0, 0, pad))[window]
    sin = F.pad(prep.sin, (0, 0, 0, pad))[window]
    attn.valid_len = lay.total
    hidden = model.run_blocks(tokens, prep, shard.num_noisy, shard.start, cos, sin)
    return model.head_tokens(hidden[:, :shard.num_noisy], prep), prep, shard


def gather_noisy_tokens(local: torch.Tensor, shard: SequenceShard, noisy: int, groups: CPGroups,
                        group: dist.ProcessGroup) -> torch.Tensor:
    """All ranks' noisy-token outputs [B, noisy, C] (inference path; not differentiable)."""
    padded = F.pad(local, (0, 0, 0, shard.length - local.shape[1])).contiguous()
    parts = [torch.empty_like(padded) for _ in range(groups.size)]
    dist.all_gather(parts, padded, group=group)
    _record("all_gather", nbytes(padded) * (groups.size - 1), nbytes(padded) * (groups.size - 1), 0.0)
    return torch.cat(parts, dim=1)[:, :noisy]


__all__ = ["ContextParallelAttention", "SequenceShard", "cp_forward_tokens", "gather_noisy_tokens", "shard_sequence",
           "use_context_parallel_attention"]
