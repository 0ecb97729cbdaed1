"""The distributed training step.

Every rank of a context-parallel group gets the same samples: their noise and timesteps come from
(seed, step, sample index), and sample indices depend on the data-parallel rank only. Each rank's loss is its
local squared-error sum divided by the global element count (all-reduced over every rank), so the FSDP
gradient SUM over dp_shard x ring x ulysses gives the mean over data-parallel samples (context-parallel
partial gradients add up to the whole-sequence gradient).
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist

from ..model import WanS2V
from ..model.flow import S2VBatch, StepStats, TrainConfig, flow_matching_loss
from .comm import _record


def data_parallel_sample_indices(step: int, dp_rank: int, dp_size: int, batch_size: int) -> torch.Tensor:
    """Global sample indices of this data-parallel rank's batch at ``step`` (never the context-parallel rank)."""
    first = (step * dp_size + dp_rank) * batch_size
    return torch.arange(first, first + batch_size)


def _all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    start = time.perf_counter()
    dist.all_reduce(x)
    _record("all_reduce", x.numel() * x.element_size(), x.numel() * x.element_size(), time.perf_counter() - start)
    return x


def parallel_train_step(model: WanS2V, optimizer: torch.optim.Optimizer, batch: S2VBatch, step: int,
                        cfg: TrainConfig) -> StepStats:
    """Forward, globally normalised loss, backward (FSDP reduce-scatters), AdamW step."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=batch.latents.device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bfloat16"):
        loss = flow_matching_loss(model, batch, cfg.seed, step, cfg.timestep_shift)
    counts = _all_reduce_sum(torch.tensor([float(loss.num_tokens)], dtype=torch.float64))
    total = int(counts.item())
    (loss.loss_sum / (total * loss.elements_per_token)).backward()
    grad_norm = None
    if cfg.grad_clip is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
    optimizer.step()
    summed = _all_reduce_sum(loss.loss_sum.detach().double().reshape(1))
    return StepStats(float(summed.item()) / (total * loss.elements_per_token), total, grad_norm)


__all__ = ["data_parallel_sample_indices", "parallel_train_step"]
