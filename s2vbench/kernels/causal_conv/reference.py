"""Plain-torch causal Conv1d + grouped LayerNorm + SiLU: the reference of the Triton op, and the model's path."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv_ln_silu_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                                  groups: int = 1, eps: float = 1e-6) -> torch.Tensor:
    """[B, C_in, T] -> SiLU(LayerNorm(conv(pad_replicate(x)))) as [B, ceil(T / stride), C_out]; the LayerNorm
    (no affine) runs over each of ``groups`` contiguous channel groups."""
    k = weight.shape[-1]
    z = F.conv1d(F.pad(x, (k - 1, 0), mode="replicate"), weight, bias, stride=stride).transpose(1, 2)
    zg = z.unflatten(-1, (groups, -1))
    return F.silu(F.layer_norm(zg, zg.shape[-1:], eps=eps)).flatten(-2)


__all__ = ["causal_conv_ln_silu_reference"]
