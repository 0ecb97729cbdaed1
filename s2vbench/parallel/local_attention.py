"""Attention on one rank's blocks with the statistics ring attention needs: (out, lse) forward, and a backward
from given (global) out and lse. Layout [B, N, H, D]; lse [B, H, N] float32.

Backends (the names of the model's attention seam): "triton" (our kernels); "torch": aten's flash attention,
the CPU kernel on CPU and the CUDA one (FlashAttention-2 inside torch) in half precision on sm_80 and later
(each returns the lse, and its backward takes out and lse), else the plain-torch reference (whole score
matrices: a correctness path, far too slow and large at the models' lengths);
"flash_attn": Dao-AILab flash-attn 2 (the ``gpu`` extra, imported on first use): the forward is
``flash_attn_func(q, k, v, return_attn_probs=True)``, whose ``softmax_lse`` is already [B, H, N] float32 (its
q/k/v/out layout is ours, [B, N, H, D]); the backward from the merged (out, lse) uses flash-attn's
``_flash_attn_backward`` kernel when the installed version has the 2.6+ signature, else the plain-torch
reference backward (a private API, so checked, never assumed).
"""

from __future__ import annotations

import inspect
import math
from types import ModuleType

import torch

BACKENDS = ("torch", "triton", "flash_attn")


def _check(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown local attention backend {backend!r}; choose one of {BACKENDS}")


def flash_attn_module() -> ModuleType:
    """``flash_attn.flash_attn_interface``, or an ImportError that names the ``gpu`` extra."""
    try:
        from flash_attn import flash_attn_interface
    except Exception as e:  # noqa: BLE001 - any import failure means the package is unusable here
        raise ImportError(f"the 'flash_attn' local attention backend needs flash-attn on a CUDA machine (install "
                          f"the 'gpu' extra: pip install 's2vbench[gpu]'), or choose 'torch' or 'triton'; importing "
                          f"it failed: {type(e).__name__}: {e}") from None
    return flash_attn_interface


def check_backend_runs_here(backend: str, device_type: str, dtype: str) -> None:
    """Raise a ValueError naming why ``backend`` cannot compute in ``dtype`` ("float32" or "bfloat16") on
    ``device_type`` ("cuda" or "cpu"), and the fix: checked before a job starts, since every rank of every
    point would otherwise fail the same way at its first attention."""
    _check(backend)
    if backend == "flash_attn":
        if device_type != "cuda":
            raise ValueError("the 'flash_attn' attention backend runs on CUDA GPUs only, and this machine has "
                             "none; choose 'torch' (or 'triton' under TRITON_INTERPRET=1)")
        try:
            flash_attn_module()
        except ImportError as e:
            raise ValueError(str(e)) from None
        if dtype != "bfloat16":
            raise ValueError(f"the 'flash_attn' backend computes in float16/bfloat16 only, got {dtype}; run with "
                             f"dtype bfloat16, or choose the 'torch' or 'triton' backend")
    elif backend == "triton" and device_type != "cuda":
        from ..kernels.interpreter import interpreting

        if not interpreting():
            raise ValueError("the 'triton' attention backend needs a CUDA GPU; on CPU it runs only in Triton's "
                             "interpreter (set TRITON_INTERPRET=1, float32 only, slow), so choose 'torch' here")
        if dtype != "float32":  # the interpreter silently computes bfloat16 wrong
            raise ValueError(f"the 'triton' attention backend in Triton's CPU interpreter computes {dtype} wrong; "
                             f"run it with dtype float32, or choose 'torch'")


def _flash_dtype_check(q: torch.Tensor) -> None:
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"the 'flash_attn' backend computes in float16/bfloat16 only, got {q.dtype}; run with "
                         f"dtype bfloat16, or choose the 'torch' or 'triton' backend")


def _flash_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    fa = flash_attn_module()
    _flash_dtype_check(q)
    out, lse, *_ = fa.flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=1.0 / math.sqrt(q.shape[-1]),
                                      causal=False, return_attn_probs=True)
    b, n, h, _ = q.shape
    if lse.ndim != 3 or tuple(lse.shape[:2]) != (b, h) or lse.shape[2] < n:  # documented: [B, H, Nq]
        raise RuntimeError(f"flash_attn_func returned softmax_lse of shape {tuple(lse.shape)}; expected "
                           f"[B, H, Nq] = {(b, h, n)}")
    return out, lse[:, :, :n].float()  # (some versions pad Nq to a multiple of 128)


_FLASH_BWD_PARAMS = ("dout", "q", "k", "v", "out", "softmax_lse", "dq", "dk", "dv", "dropout_p", "softmax_scale",
                     "causal", "window_size_left", "window_size_right", "softcap", "alibi_slopes", "deterministic")


def _flash_backward(dout, q, k, v, out, lse) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    fa = flash_attn_module()
    _flash_dtype_check(q)
    bwd = getattr(fa, "_flash_attn_backward", None)
    try:  # 2.6+ wraps it in torch.library.custom_op, whose Python function is _init_fn
        sig = inspect.signature(getattr(bwd, "_init_fn", bwd))
        params = tuple(sig.parameters)[:len(_FLASH_BWD_PARAMS)] if bwd is not None else ()
    except (TypeError, ValueError):  # a builtin or custom op without an inspectable signature
        params = ()
    if params != _FLASH_BWD_PARAMS:  # another flash-attn version: the reference backward from (out, lse)
        from ..kernels.attention import attention_backward_reference

        return attention_backward_reference(dout, q, k, v, out, lse)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    bwd(dout.contiguous(), q, k, v, out, lse.float().contiguous(), dq, dk, dv, 0.0, 1.0 / math.sqrt(q.shape[-1]),
        False, -1, -1, 0.0, None, False)
    return dq, dk, dv


def aten_flash_applies(q: torch.Tensor) -> bool:
    """Whether torch's CUDA flash attention takes ``q``: half precision, a head_dim it compiles (a multiple of 8
    up to 256), an Ampere or later GPU."""
    return (q.device.type == "cuda" and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] % 8 == 0
            and q.shape[-1] <= 256 and torch.cuda.get_device_capability(q.device) >= (8, 0))


def aten_flash_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, lse [B, H, Nq] float32) from aten's flash attention (its layout is [B, H, N, D])."""
    out, lse, *_ = torch.ops.aten._scaled_dot_product_flash_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                                      v.transpose(1, 2))
    return out.transpose(1, 2), lse


def aten_flash_backward(dout, q, k, v, out, lse) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """aten's flash backward from a given (out, lse), which ring attention merges over blocks. Not varlen: no
    cumulative lengths (what its own forward returns then); without dropout the RNG state goes unread."""
    b, n, h, _ = q.shape
    if tuple(lse.shape) != (b, h, n):  # the kernel reads it unchecked as a contiguous [B, H, Nq]
        raise ValueError(f"lse of shape {tuple(lse.shape)} for q of shape {tuple(q.shape)}; expected [B, H, Nq] = "
                         f"{(b, h, n)}")
    t = [x.transpose(1, 2) for x in (dout, q, k, v, out)]
    rng = torch.empty(2, dtype=torch.uint64, device=q.device), torch.empty((), dtype=torch.uint64, device=q.device)
    dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_backward(
        *t, lse.float().contiguous(), None, None, q.shape[1], k.shape[1], 0.0, False, *rng)
    return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)


def local_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "torch"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    _check(backend)
    if backend == "triton":
        from ..kernels.attention import attention_forward

        return attention_forward(q, k, v)
    if backend == "flash_attn":
        return _flash_forward(q, k, v)
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2), lse if lse.dtype == torch.float64 else lse.float()
    if aten_flash_applies(q):
        return aten_flash_forward(q, k, v)
    from ..kernels.attention import attention_reference

    return attention_reference(q, k, v)


def local_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                   lse: torch.Tensor, backend: str = "torch") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check(backend)
    if backend == "triton":
        from ..kernels.attention import attention_backward

        return attention_backward(dout, q, k, v, out, lse)
    if backend == "flash_attn":
        return _flash_backward(dout, q, k, v, out, lse)
    if q.device.type == "cpu":
        t = [x.transpose(1, 2) for x in (dout, q, k, v, out)]
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            *t, lse.to(q.dtype) if q.dtype == torch.float64 else lse, 0.0, False)
        return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)
    if aten_flash_applies(q):
        return aten_flash_backward(dout, q, k, v, out, lse)
    from ..kernels.attention import attention_backward_reference

    return attention_backward_reference(dout, q, k, v, out, lse)


__all__ = ["BACKENDS", "aten_flash_applies", "aten_flash_backward", "aten_flash_forward", "check_backend_runs_here",
           "flash_attn_module", "local_backward", "local_forward"]
