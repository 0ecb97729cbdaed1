"""3D rotary position embedding as a head-free per-token (cos, sin) table.

The official code builds a complex128 [B, S, heads, head_dim/2] table every forward (2.6 GB at 63k
tokens) although the angles do not depend on the head. Here the angles are computed in float64 from
integer positions and stored once as float32 [S, head_dim/2] cos and sin (32 MB at 63k tokens).
"""

from __future__ import annotations

import torch


def rope_inv_freqs(head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float64 inverse frequencies of the (t, h, w) axes, which own consecutive slices of the pairs."""
    c = head_dim // 2
    pairs = (c - 2 * (c // 3), c // 3, c // 3)
    return tuple(1.0 / theta ** (torch.arange(0, 2 * n, 2, dtype=torch.float64) / (2 * n)) for n in pairs)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each float32 [S, head_dim/2], for integer (t, y, x) positions [S, 3].

    A negative time position rotates backwards, which is exactly the official conjugated table entry.
    """
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must be [S, 3] (t, y, x), got {tuple(positions.shape)}")
    pos = positions.to(torch.float64)
    angles = torch.cat([pos[:, axis:axis + 1] * inv.to(pos.device)
                        for axis, inv in enumerate(rope_inv_freqs(head_dim, theta))], dim=1)
    return torch.cos(angles).float(), torch.sin(angles).float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs of x [B, S, H, D] by the per-token angles; computes in at least float32."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    pairs = x.to(dtype).unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    c = cos.to(dtype)[None, :, None, :]
    s = sin.to(dtype)[None, :, None, :]
    return torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)


__all__ = ["apply_rope", "rope_cos_sin", "rope_inv_freqs"]
