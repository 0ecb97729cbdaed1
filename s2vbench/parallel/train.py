"""The distributed training step.

Every rank of a context-parallel group gets the same samples: their noise and timesteps come from
(seed, step, sample index), and sample indices depend on the data-parallel rank only. Each rank's loss is its
local squared-error sum divided by the global element count (all-reduced over every rank), so the FSDP
gradient SUM over all ranks (dp_shard x ring x ulysses, and across HSDP's replica groups) gives the mean over
data-parallel samples (context-parallel
partial gradients add up to the whole-sequence gradient). Implemented as: accumulate the gradients of the loss
sums, then divide them once, which also makes gradient accumulation over micro-batches exact.
"""

from __future__ import annotations

import torch

from ..model import WanS2V
from ..model.flow import S2VBatch, StepStats, TrainConfig, accumulate_gradients, scale_gradients
from .comm import all_reduce_sum


def data_parallel_sample_indices(step: int, dp_rank: int, dp_size: int, batch_size: int) -> torch.Tensor:
    """Global sample indices of this data-parallel rank's batch at ``step`` (never the context-parallel rank)."""
    first = (step * dp_size + dp_rank) * batch_size
    return torch.arange(first, first + batch_size)


def parallel_train_step(model: WanS2V, optimizer: torch.optim.Optimizer, batch: S2VBatch | list[S2VBatch],
                        step: int, cfg: TrainConfig) -> StepStats:
    """Forward and backward of each micro-batch (FSDP reduce-scatters the gradient sums), then the gradients are
    divided by the global element count (all-reduced) and AdamW steps."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    batches = batch if isinstance(batch, list) else [batch]
    loss_sum, tokens, per_token = accumulate_gradients(model, batches, step, cfg)
    # on the batch's device: NCCL reduces device tensors only
    totals = all_reduce_sum(torch.tensor([float(tokens), loss_sum], dtype=torch.float64,
                                         device=batches[0].latents.device))
    total = int(totals[0].item())
    scale_gradients(model, 1.0 / (total * per_token))
    grad_norm = None
    if cfg.grad_clip is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
    optimizer.step()
    return StepStats(float(totals[1].item()) / (total * per_token), total, grad_norm)


__all__ = ["data_parallel_sample_indices", "parallel_train_step"]
