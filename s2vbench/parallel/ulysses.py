"""Ulysses: all-to-all between sequence-sharded and head-sharded q/k/v (and back for the output)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from .comm import all_to_all


def valid_ulysses_degrees(num_heads: int) -> list[int]:
    return [d for d in range(1, num_heads + 1) if num_heads % d == 0]


def check_ulysses_degree(num_heads: int, degree: int) -> None:
    if degree < 1 or num_heads % degree:
        raise ValueError(f"the Ulysses degree {degree} must divide the {num_heads} attention heads; valid degrees: "
                         f"{', '.join(map(str, valid_ulysses_degrees(num_heads)))}")


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, scatter_dim, gather_dim):
        ctx.group, ctx.scatter_dim, ctx.gather_dim = group, scatter_dim, gather_dim
        return all_to_all(x, scatter_dim, gather_dim, group)

    @staticmethod
    def backward(ctx, grad):
        return all_to_all(grad, ctx.gather_dim, ctx.scatter_dim, ctx.group), None, None, None


def seq_to_head(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """[B, L, H, D] (this rank's L tokens, all heads) -> [B, p L, H / p, D] (all p ranks' tokens, my heads)."""
    check_ulysses_degree(x.shape[2], dist.get_world_size(group))
    return _AllToAll.apply(x, group, 2, 1)


def head_to_seq(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """[B, p L, H / p, D] -> [B, L, H, D]."""
    return _AllToAll.apply(x, group, 1, 2)


__all__ = ["check_ulysses_degree", "head_to_seq", "seq_to_head", "valid_ulysses_degrees"]
