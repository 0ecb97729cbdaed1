"""Activation checkpointing that keeps every attention's output and LSE.

Blocks are recomputed in the backward pass, except the context-parallel attention op, whose outputs (out,
lse and the head-sharded q/k/v/out its backward needs) are saved: the recompute never re-runs Ulysses
all-to-alls or ring exchanges.
"""

from __future__ import annotations

from functools import partial

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from . import sequence_parallel  # noqa: F401  (registers torch.ops.s2vbench.cp_attention)

SAVED_OPS = (torch.ops.s2vbench.cp_attention.default,)


def _policy(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def attention_saving_context_fn():
    """``context_fn`` for torch.utils.checkpoint that saves the attention op's outputs."""
    return create_selective_checkpoint_contexts(_policy)


def enable_activation_checkpointing(model) -> None:
    model.activation_checkpointing = True
    model.checkpoint_context_fn = partial(attention_saving_context_fn)


__all__ = ["SAVED_OPS", "attention_saving_context_fn", "enable_activation_checkpointing"]
