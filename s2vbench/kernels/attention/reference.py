"""Plain-torch attention with log-sum-exp, forward and backward: the references the Triton kernels must match.

Layout: q [B, Nq, H, D], k and v [B, Nk, H, D]; lse [B, H, Nq] float32 natural log (-inf for a query whose
keys are all masked, whose output is then 0). ``kv_lens`` [B] masks keys at or past each item's length.
"""

from __future__ import annotations

import math

import torch


def _scores(q: torch.Tensor, k: torch.Tensor, kv_lens: torch.Tensor | None, scale: float) -> torch.Tensor:
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if kv_lens is not None:
        valid = torch.arange(k.shape[1], device=k.device)[None, :] < kv_lens.to(k.device)[:, None]
        s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    return s


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lens: torch.Tensor | None = None,
                        scale: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, Nq, H, D] in q's dtype, lse [B, H, Nq] float32), computed in q's dtype."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = _scores(q, k, kv_lens, scale)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))[..., None])
    out = torch.einsum("bhqk,bkhd->bqhd", p, v)
    return out, lse.float()


def attention_backward_reference(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 out: torch.Tensor, lse: torch.Tensor, kv_lens: torch.Tensor | None = None,
                                 scale: float | None = None, dlse: torch.Tensor | None = None
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) from the given (possibly global, merged) out and lse, as ring attention needs.

    ``dlse`` is the gradient reaching lse itself (zero when only out is used)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    dt = q.dtype
    s = _scores(q, k, kv_lens, scale)
    lse_ = lse.to(dt)
    p = torch.exp(s - torch.where(torch.isfinite(lse_), lse_, torch.full_like(lse_, float("inf")))[..., None])
    delta = (dout.to(dt) * out.to(dt)).sum(-1).transpose(1, 2)  # [B, H, Nq]
    if dlse is not None:
        delta = delta - dlse.to(dt)
    dv = torch.einsum("bhqk,bqhd->bkhd", p, dout.to(dt))
    dp = torch.einsum("bqhd,bkhd->bhqk", dout.to(dt), v)
    ds = p * (dp - delta[..., None]) * scale
    dq = torch.einsum("bhqk,bkhd->bqhd", ds, k)
    dk = torch.einsum("bhqk,bqhd->bkhd", ds, q)
    return dq, dk, dv


def merge_attention(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two partial attentions over disjoint key sets into the attention over their union.

    out [B, N, H, D], lse [B, H, N]. Computed in float32 (float64 stays float64); a part whose keys were all
    masked (lse = -inf) gets weight 0, and if both are, the result is out 0, lse -inf, never NaN."""
    dtype = torch.promote_types(out_a.dtype, torch.float32)
    lse = torch.logaddexp(lse_a.to(dtype), lse_b.to(dtype))
    base = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    w_a = torch.exp(lse_a.to(dtype) - base).transpose(1, 2)[..., None]
    w_b = torch.exp(lse_b.to(dtype) - base).transpose(1, 2)[..., None]
    return w_a * out_a.to(dtype) + w_b * out_b.to(dtype), lse


__all__ = ["attention_backward_reference", "attention_reference", "merge_attention"]
