"""Launchers for the Triton attention kernels, the ``torch.library`` custom ops, and the autograd function.

``flash_attention(q, k, v, kv_lens)`` is what the model's attention seam calls for the "triton" backend.
``attention_forward`` / ``attention_backward`` are the raw launches ring attention uses: the backward takes
any (out, lse), e.g. the merged global statistics of a ring step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton

from ..compile_options import COMPILE_OPTIONS
from ..interpreter import check_interpreter, interpreting
from .triton_kernels import _attn_bwd_delta, _attn_bwd_dkdv, _attn_bwd_dq, _attn_fwd, _attn_fwd_tma

VARIANTS = ("pointer", "tma", "tma_ws")
"""Forward variants: pointer (default), tma (tensor descriptors), tma_ws (tma + warp-specialised key loop)."""


def _check_device(*tensors: torch.Tensor) -> None:
    dev = tensors[0].device
    if any(t.device != dev for t in tensors):
        raise ValueError(f"attention tensors are on different devices: {[str(t.device) for t in tensors]}")
    if dev.type != "cuda" and not interpreting():
        raise RuntimeError(f"the Triton attention kernels need a CUDA device (got {dev}); on CPU run them under the "
                           f"Triton interpreter with TRITON_INTERPRET=1 (float32 only), or use the 'torch' backend")
    check_interpreter()


def _check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lens: torch.Tensor | None) -> None:
    if q.ndim != 4 or k.shape != v.shape or k.ndim != 4:
        raise ValueError(f"expected q [B, Nq, H, D] and k, v [B, Nk, H, D]; got q{tuple(q.shape)} k{tuple(k.shape)} "
                         f"v{tuple(v.shape)}")
    b, _, h, d = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (b, h, d):
        raise ValueError(f"q{tuple(q.shape)} and k{tuple(k.shape)} disagree on batch, heads or head_dim")
    if not 16 <= d <= 128:
        raise ValueError(f"head_dim {d} is outside the supported 16..128")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one of float16, bfloat16, float32; got {q.dtype}, {k.dtype}, {v.dtype}")
    if kv_lens is not None and tuple(kv_lens.shape) != (b,):
        raise ValueError(f"kv_lens must have shape ({b},), got {tuple(kv_lens.shape)}")


def _last_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and launch parameters of one kernel."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


def forward_config(head_dim: int, device: torch.device, dtype: torch.dtype = torch.bfloat16,
                   variant: str = "pointer") -> LaunchConfig:
    # One fixed config per case: autotuning is GPU-only and multi-config autotune fails in the interpreter.
    # Every config's shared memory fits an A100's 163 KiB a block, the smallest of the profiles' GPUs
    # (tests/test_kernels_compile.py compiles each for sm_80 and sm_90 and checks).
    if device.type != "cuda":
        return LaunchConfig(32, 32, 4, 1)
    if variant == "tma_ws":
        # Triton's warp specialisation applies only on 4 warps (on 8 it is skipped without a word: the same PTX as
        # "tma") and fails to compile a 128-row query block on 4 warps, so 64 rows
        return LaunchConfig(64, 32 if dtype == torch.float32 and head_dim > 64 else 64, 4, 3)
    if head_dim <= 64:
        return LaunchConfig(128, 64, 4, 3)
    if dtype == torch.float32:  # twice the bytes a tile: 128 x 64 over 3 stages needs 225 KiB (tma 257 KiB)
        return LaunchConfig(128, 32, 8, 2)
    return LaunchConfig(128, 64, 8, 3)


def backward_config(head_dim: int, device: torch.device) -> LaunchConfig:
    if device.type != "cuda":
        return LaunchConfig(32, 32, 4, 1)
    return LaunchConfig(64, 64, 4 if head_dim <= 64 else 8, 2)


def _precision(dtype: torch.dtype) -> str | None:
    # Triton's default for fp32 dots on the GPU is tf32; fp32 inputs must mean fp32 arithmetic. Half-precision
    # dots keep Triton's default (the setting only concerns fp32 operands).
    return "ieee" if dtype == torch.float32 else None


def _tma_allocator(size: int, alignment: int, stream) -> torch.Tensor:
    return torch.empty(size, device="cuda", dtype=torch.int8)


def attention_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lens: torch.Tensor | None = None,
                      scale: float | None = None, variant: str = "pointer", out: torch.Tensor | None = None,
                      lse: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [B, Nq, H, D] in q's dtype, lse [B, H, Nq] float32 natural log). ``out``/``lse`` may be given."""
    _check_shapes(q, k, v, kv_lens)
    _check_device(q, k, v, *([] if kv_lens is None else [kv_lens]))
    if variant not in VARIANTS:
        raise ValueError(f"unknown attention variant {variant!r}; choose one of {VARIANTS}")
    b, nq, h, d = q.shape
    nk = k.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    out = torch.empty_like(q, memory_format=torch.contiguous_format) if out is None else out
    lse = torch.empty(b, h, nq, device=q.device, dtype=torch.float32) if lse is None else lse
    lens = kv_lens.to(device=q.device, dtype=torch.int32) if kv_lens is not None else q.new_empty(1, dtype=torch.int32)
    cfg = forward_config(d, q.device, q.dtype, variant)
    grid = (triton.cdiv(nq, cfg.block_m), b * h)
    qk_scale = scale * 1.4426950408889634
    if variant == "pointer":
        q, k, v = _last_contiguous(q), _last_contiguous(k), _last_contiguous(v)
        _attn_fwd[grid](q, k, v, out, lse, lens,
                        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
                        h, nq, nk, qk_scale,
                        HAS_LENS=kv_lens is not None, HEAD_DIM=d, D_PAD=max(16, triton.next_power_of_2(d)),
                        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, PRECISION=_precision(q.dtype),
                        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **COMPILE_OPTIONS)
    else:
        if d != triton.next_power_of_2(d):
            raise ValueError(f"the {variant} variant needs a power-of-two head_dim, got {d}; use variant='pointer'")
        if not out.is_contiguous():
            raise ValueError("the tma variants write a contiguous out")
        if q.device.type == "cuda":
            triton.set_allocator(_tma_allocator)
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        _attn_fwd_tma[grid](q, k, v, out, lse, lens, b, h, nq, nk, qk_scale,
                            HAS_LENS=kv_lens is not None, HEAD_DIM=d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                            PRECISION=_precision(q.dtype), WARP_SPECIALIZE=variant == "tma_ws",
                            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **COMPILE_OPTIONS)
    return out, lse


def attention_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                       lse: torch.Tensor, kv_lens: torch.Tensor | None = None, scale: float | None = None,
                       dlse: torch.Tensor | None = None, dq: torch.Tensor | None = None,
                       dk: torch.Tensor | None = None, dv: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) for the given (out, lse), which may be the global statistics of a split attention."""
    _check_shapes(q, k, v, kv_lens)
    _check_device(q, k, v, out, lse, dout)
    b, nq, h, d = q.shape
    nk = k.shape[1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    q, k, v, out, dout = (_last_contiguous(t) for t in (q, k, v, out, dout))
    lse = lse.float().contiguous()
    dq = torch.empty_like(q) if dq is None else dq
    dk = torch.empty_like(k) if dk is None else dk
    dv = torch.empty_like(v) if dv is None else dv
    lens = kv_lens.to(device=q.device, dtype=torch.int32) if kv_lens is not None else q.new_empty(1, dtype=torch.int32)
    d_pad = max(16, triton.next_power_of_2(d))
    cfg = backward_config(d, q.device)
    delta = torch.empty(b, h, nq, device=q.device, dtype=torch.float32)
    dlse_ = dlse.float().contiguous() if dlse is not None else delta
    _attn_bwd_delta[(triton.cdiv(nq, cfg.block_m), b * h)](
        out, dout, dlse_, delta, out.stride(0), out.stride(1), out.stride(2), dout.stride(0), dout.stride(1),
        dout.stride(2), h, nq, HAS_DLSE=dlse is not None, HEAD_DIM=d, D_PAD=d_pad, BLOCK_M=cfg.block_m,
        **COMPILE_OPTIONS)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1), dout.stride(2))
    common = dict(HAS_LENS=kv_lens is not None, HEAD_DIM=d, D_PAD=d_pad, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                  PRECISION=_precision(q.dtype), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                  **COMPILE_OPTIONS)
    qk_scale = scale * 1.4426950408889634
    _attn_bwd_dkdv[(triton.cdiv(nk, cfg.block_n), b * h)](
        q, k, v, dout, lse, delta, dk, dv, lens, *strides,
        dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
        h, nq, nk, scale, qk_scale, **common)
    _attn_bwd_dq[(triton.cdiv(nq, cfg.block_m), b * h)](
        q, k, v, dout, lse, delta, dq, lens, *strides, dq.stride(0), dq.stride(1), dq.stride(2),
        h, nq, nk, scale, qk_scale, **common)
    return dq, dk, dv


# ---- torch.library custom ops (compile- and meta-traceable) ------------------------------------------------
@torch.library.custom_op("s2vbench::flash_attention_fwd", mutates_args=())
def flash_attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lens: torch.Tensor | None,
                        scale: float, variant: str) -> tuple[torch.Tensor, torch.Tensor]:
    return attention_forward(q, k, v, kv_lens, scale, variant)


@flash_attention_fwd.register_fake
def _(q, k, v, kv_lens, scale, variant):
    b, nq, h, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(b, h, nq, dtype=torch.float32)


@torch.library.custom_op("s2vbench::flash_attention_bwd", mutates_args=())
def flash_attention_bwd(dout: torch.Tensor, dlse: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor,
                        v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, kv_lens: torch.Tensor | None,
                        scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return attention_backward(dout, q, k, v, out, lse, kv_lens, scale, dlse)


@flash_attention_bwd.register_fake
def _(dout, dlse, q, k, v, out, lse, kv_lens, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, kv_lens, scale, _ = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, kv_lens)
    ctx.scale = scale


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, kv_lens = ctx.saved_tensors
    dq, dk, dv = flash_attention_bwd(dout.contiguous(), None if dlse is None else dlse.contiguous(), q, k, v, out, lse,
                                     kv_lens, ctx.scale)
    return dq, dk, dv, None, None, None


flash_attention_fwd.register_autograd(_backward, setup_context=_setup_context)


def flash_attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lens: torch.Tensor | None = None,
                             scale: float | None = None, variant: str = "pointer"
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Differentiable (out, lse); gradients flow from both."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    return flash_attention_fwd(q, k, v, kv_lens, scale, variant)


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lens: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """The model seam's "triton" backend: [B, Nq, H, D] -> [B, Nq, H, D]."""
    return flash_attention_with_lse(q, k, v, kv_lens)[0]


__all__ = ["LaunchConfig", "VARIANTS", "attention_backward", "attention_forward", "backward_config",
           "flash_attention", "flash_attention_with_lse", "forward_config", "interpreting"]
