"""Attention on one rank's blocks with the statistics ring attention needs: (out, lse) forward, and a backward
from given (global) out and lse. Layout [B, N, H, D]; lse [B, H, N] float32.

Backends: "triton" (our kernels); "torch": aten's CPU flash attention on CPU (it returns the lse and its
backward takes out and lse), the plain-torch reference elsewhere.
"""

from __future__ import annotations

import torch

BACKENDS = ("torch", "triton")


def _check(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown local attention backend {backend!r}; choose one of {BACKENDS}")


def local_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "torch"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    _check(backend)
    if backend == "triton":
        from ..kernels.attention import attention_forward

        return attention_forward(q, k, v)
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2), lse if lse.dtype == torch.float64 else lse.float()
    from ..kernels.attention import attention_reference

    return attention_reference(q, k, v)


def local_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                   lse: torch.Tensor, backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(backend)
    if backend == "triton":
        from ..kernels.attention import attention_backward

        return attention_backward(dout, q, k, v, out, lse)
    if q.device.type == "cpu":
        t = [x.transpose(1, 2) for x in (dout, q, k, v, out)]
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            *t, lse.to(q.dtype) if q.dtype == torch.float64 else lse, 0.0, False)
        return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)
    from ..kernels.attention import attention_backward_reference

    return attention_backward_reference(dout, q, k, v, out, lse)


__all__ = ["BACKENDS", "local_backward", "local_forward"]
