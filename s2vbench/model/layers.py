"""Transformer building blocks of the Wan-S2V DiT.

Precision follows the official code: norms, modulation, RoPE and the residual stream stay in at least
float32 (the "fp32 islands"); the linear layers and attention run in the autocast dtype when one is active.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention
from .rope import apply_rope


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def linear_as_input(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` computed in x's dtype whatever the parameters' dtype (inside fp32 islands)."""
    bias = None if layer.bias is None else layer.bias.to(x.dtype)
    return F.linear(x, layer.weight.to(x.dtype), bias)


def fp32_island(device_type: str):
    """Disable autocast so the enclosed arithmetic runs in the inputs' own (>= float32) precision."""
    return torch.autocast(device_type=device_type, enabled=False)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 and cast back before the learned scale (official ``WanRMSNorm``)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = at_least_fp32(x)
        y = y * torch.rsqrt(y.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in at least float32 and cast back to the input dtype (official ``WanLayerNorm``)."""

    def __init__(self, dim: int, eps: float, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with fp32_island(x.device.type):
            y = at_least_fp32(x)
            w = None if self.weight is None else self.weight.to(y.dtype)
            b = None if self.bias is None else self.bias.to(y.dtype)
            return F.layer_norm(y, self.normalized_shape, w, b, self.eps).type_as(x)


class _Attention(nn.Module):
    """q/k/v/o projections with full-width q/k RMSNorm, and the name of the attention backend to call."""

    def __init__(self, dim: int, num_heads: int, eps: float, qk_norm: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.attn_backend = "torch"
        """Name of the attention backend (see :mod:`s2vbench.model.attention`); parallel code swaps it."""


class SelfAttention(_Attention):
    """Multi-head self-attention with 3D RoPE on q and k."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                kv_lens: torch.Tensor | None = None) -> torch.Tensor:
        b, s = x.shape[:2]
        shape = (b, s, self.num_heads, self.head_dim)
        v = self.v(x).view(shape)
        q = apply_rope(self.norm_q(self.q(x)).view(shape), cos, sin).to(v.dtype)
        k = apply_rope(self.norm_k(self.k(x)).view(shape), cos, sin).to(v.dtype)
        out = attention(q, k, v, kv_lens, backend=self.attn_backend)
        return self.o(out.flatten(2))


class CrossAttention(_Attention):
    """Multi-head cross-attention (text, or a latent frame's audio tokens); no RoPE."""

    def forward(self, x: torch.Tensor, context: torch.Tensor, kv_lens: torch.Tensor | None = None) -> torch.Tensor:
        b, nq, nk = x.shape[0], x.shape[1], context.shape[1]  # explicit sizes: b may be 0 (an empty window)
        v = self.v(context).view(b, nk, self.num_heads, self.head_dim)
        q = self.norm_q(self.q(x)).view(b, nq, self.num_heads, self.head_dim).to(v.dtype)
        k = self.norm_k(self.k(context)).view(b, nk, self.num_heads, self.head_dim).to(v.dtype)
        return self.o(attention(q, k, v, kv_lens, backend=self.attn_backend).flatten(2))


def modulate_segments(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, num_noisy: int) -> torch.Tensor:
    """``x * (1 + scale) + shift`` with variant 0 of shift/scale ([B, 2, C]) on the first ``num_noisy`` tokens
    (the noisy video) and variant 1 on the rest (ref and motion, which carry the zero-timestep embedding)."""
    parts = []
    for variant, seg in enumerate((x[:, :num_noisy], x[:, num_noisy:])):
        if seg.shape[1]:
            parts.append(seg * (1 + scale[:, variant:variant + 1]) + shift[:, variant:variant + 1])
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def gate_segments(y: torch.Tensor, gate: torch.Tensor, num_noisy: int) -> torch.Tensor:
    parts = []
    for variant, seg in enumerate((y[:, :num_noisy], y[:, num_noisy:])):
        if seg.shape[1]:
            parts.append(seg * gate[:, variant:variant + 1])
    return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


class WanS2VBlock(nn.Module):
    """One DiT block: modulated self-attention, text cross-attention, modulated FFN."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float, qk_norm: bool, cross_attn_norm: bool):
        super().__init__()
        self.dim = dim
        self.norm1 = FP32LayerNorm(dim, eps)
        self.self_attn = SelfAttention(dim, num_heads, eps, qk_norm)
        self.norm3 = FP32LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, num_heads, eps, qk_norm)
        self.norm2 = FP32LayerNorm(dim, eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)

    def forward(self, x: torch.Tensor, e0: torch.Tensor, num_noisy: int, cos: torch.Tensor, sin: torch.Tensor,
                context: torch.Tensor, kv_lens: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, S, C] (>= fp32 residual stream); e0 [B, 6, 2, C] timestep projections (variant 0: t, 1: zero
        timestep); ``num_noisy`` leading tokens of x are noisy video; ``kv_lens`` masks padded keys."""
        with fp32_island(x.device.type):
            shift_msa, scale_msa, gate_msa, shift_ffn, scale_ffn, gate_ffn = \
                (self.modulation.unsqueeze(2).to(e0.dtype) + e0).unbind(1)
        y = self.self_attn(modulate_segments(at_least_fp32(self.norm1(x)), shift_msa, scale_msa, num_noisy),
                           cos, sin, kv_lens)
        with fp32_island(x.device.type):
            x = x + gate_segments(at_least_fp32(y), gate_msa, num_noisy)
        x = x + self.cross_attn(self.norm3(x), context)
        y = self.ffn(modulate_segments(at_least_fp32(self.norm2(x)), shift_ffn, scale_ffn, num_noisy))
        with fp32_island(x.device.type):
            x = x + gate_segments(at_least_fp32(y), gate_ffn, num_noisy)
        return x

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.modulation.copy_(torch.randn_like(self.modulation) / self.dim ** 0.5)


class Head(nn.Module):
    """Final modulated LayerNorm and projection to patch velocities (official ``Head_S2V``)."""

    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float):
        super().__init__()
        self.dim = dim
        self.norm = FP32LayerNorm(dim, eps)
        self.head = nn.Linear(dim, out_dim * math.prod(patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x [B, N, C]; e [B, C] time embedding of the noisy tokens. Runs entirely in >= float32."""
        with fp32_island(x.device.type):
            shift, scale = (self.modulation.to(e.dtype) + e.unsqueeze(1)).unbind(1)
            y = at_least_fp32(self.norm(x)) * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
            return linear_as_input(self.head, y)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.modulation.copy_(torch.randn_like(self.modulation) / self.dim ** 0.5)


__all__ = ["CrossAttention", "FP32LayerNorm", "Head", "RMSNorm", "SelfAttention", "WanS2VBlock", "at_least_fp32",
           "fp32_island", "gate_segments", "linear_as_input", "modulate_segments"]
