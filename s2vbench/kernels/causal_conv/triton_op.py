"""Triton path of the causal Conv1d (kernel K, replicate left pad, stride 1 or 2) + LayerNorm + SiLU.

``y = SiLU(LayerNorm(conv(pad_replicate(x))))`` with the LayerNorm (no affine) taken over each of ``groups``
contiguous channel groups of the conv output. Layouts: x [B, C_in, T] -> y [B, T_out, C_out],
T_out = ceil(T / stride). This is the unit of the Wan-S2V audio encoder (``casual_audio_encoder``).

Forward: one Triton kernel computes the conv as K shifted GEMMs (the replicate padding is an index clamp,
never materialised) into a float32 buffer; a second normalises each row group and applies SiLU. Backward:
a Triton kernel turns dy into the conv-output gradient through SiLU and LayerNorm, and the conv's own
gradients come from aten's convolution_backward (cuDNN on GPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..compile_options import COMPILE_OPTIONS
from ..interpreter import check_interpreter, interpreting


@triton.jit
def _conv_fwd(X, W, BIAS, Z, sxb, sxc, sxt, C_IN, C_OUT, T_IN, T_OUT,
              KSIZE: tl.constexpr, STRIDE: tl.constexpr, HAS_BIAS: tl.constexpr,
              BLOCK_T: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_CI: tl.constexpr, PRECISION: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_c = tl.program_id(1)
    b = tl.program_id(2)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_co = pid_c * BLOCK_CO + tl.arange(0, BLOCK_CO)
    t_ok = offs_t < T_OUT
    co_ok = offs_co < C_OUT
    acc = tl.zeros([BLOCK_T, BLOCK_CO], dtype=tl.float32)
    for ci0 in range(0, C_IN, BLOCK_CI):
        ci = ci0 + tl.arange(0, BLOCK_CI)
        ci_ok = ci < C_IN
        for j in tl.static_range(KSIZE):
            # replicate left padding = clamping the input time index at 0
            t_in = tl.maximum(offs_t * STRIDE + j - (KSIZE - 1), 0)
            xt = tl.load(X + b * sxb + ci[None, :] * sxc + t_in[:, None] * sxt, mask=t_ok[:, None] & ci_ok[None, :],
                         other=0.0)
            wj = tl.load(W + offs_co[None, :] * (C_IN * KSIZE) + ci[:, None] * KSIZE + j,
                         mask=ci_ok[:, None] & co_ok[None, :], other=0.0)
            acc += tl.dot(xt, wj, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_co, mask=co_ok, other=0.0)[None, :].to(tl.float32)
    tl.store(Z + (b * T_OUT + offs_t[:, None]) * C_OUT + offs_co[None, :], acc, mask=t_ok[:, None] & co_ok[None, :])


@triton.jit
def _ln_silu_fwd(Z, Y, MEAN, RSTD, GROUP, eps, BLOCK: tl.constexpr):
    """One (row, group) per program: two-pass mean and variance, then normalise and SiLU."""
    row = tl.program_id(0)
    base = row * GROUP
    s = tl.zeros([BLOCK], dtype=tl.float32)
    for c0 in range(0, GROUP, BLOCK):
        c = c0 + tl.arange(0, BLOCK)
        s += tl.load(Z + base + c, mask=c < GROUP, other=0.0)
    mean = tl.sum(s, 0) / GROUP
    s = tl.zeros([BLOCK], dtype=tl.float32)
    for c0 in range(0, GROUP, BLOCK):
        c = c0 + tl.arange(0, BLOCK)
        d = tl.where(c < GROUP, tl.load(Z + base + c, mask=c < GROUP, other=0.0) - mean, 0.0)
        s += d * d
    rstd = 1.0 / tl.sqrt(tl.sum(s, 0) / GROUP + eps)
    for c0 in range(0, GROUP, BLOCK):
        c = c0 + tl.arange(0, BLOCK)
        n = (tl.load(Z + base + c, mask=c < GROUP, other=0.0) - mean) * rstd
        tl.store(Y + base + c, (n * tl.sigmoid(n)).to(Y.dtype.element_ty), mask=c < GROUP)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)


@triton.jit
def _normalised_and_grad(Z, DY, offs, ok, mean, rstd):
    """n = LayerNorm(z) and dn = dy * SiLU'(n) at ``offs``; both backward passes need them, and recomputing
    beats keeping a row-sized buffer."""
    n = (tl.load(Z + offs, mask=ok, other=0.0) - mean) * rstd
    sig = tl.sigmoid(n)
    dn = tl.load(DY + offs, mask=ok, other=0.0).to(tl.float32) * sig * (1 + n * (1 - sig))
    return n, dn


@triton.jit
def _ln_silu_bwd(Z, DY, MEAN, RSTD, DZ, GROUP, BLOCK: tl.constexpr):
    """dz = rstd * (dn - mean(dn) - n * mean(dn * n)), dn = dy * SiLU'(n)."""
    row = tl.program_id(0)
    base = row * GROUP
    mean = tl.load(MEAN + row)
    rstd = tl.load(RSTD + row)
    a = tl.zeros([BLOCK], dtype=tl.float32)
    bsum = tl.zeros([BLOCK], dtype=tl.float32)
    for c0 in range(0, GROUP, BLOCK):
        c = c0 + tl.arange(0, BLOCK)
        ok = c < GROUP
        n, dn = _normalised_and_grad(Z, DY, base + c, ok, mean, rstd)
        a += tl.where(ok, dn, 0.0)
        bsum += tl.where(ok, dn * n, 0.0)
    mean_dn = tl.sum(a, 0) / GROUP
    mean_dnn = tl.sum(bsum, 0) / GROUP
    for c0 in range(0, GROUP, BLOCK):
        c = c0 + tl.arange(0, BLOCK)
        ok = c < GROUP
        n, dn = _normalised_and_grad(Z, DY, base + c, ok, mean, rstd)
        tl.store(DZ + base + c, rstd * (dn - mean_dn - n * mean_dnn), mask=ok)


def _empty(*shape: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Allocation of every buffer the kernels write (tests swap it for a NaN-filled one)."""
    return torch.empty(*shape, device=device, dtype=dtype)


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int, groups: int) -> None:
    if x.ndim != 3 or weight.ndim != 3 or x.shape[1] != weight.shape[1]:
        raise ValueError(f"expected x [B, C_in, T] and weight [C_out, C_in, K]; got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    if weight.shape[0] % groups:
        raise ValueError(f"C_out={weight.shape[0]} is not divisible into {groups} LayerNorm groups")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"bias must be [C_out={weight.shape[0]}], got {tuple(bias.shape)}")
    if x.device.type != "cuda" and not interpreting():
        raise RuntimeError(f"the Triton causal conv needs a CUDA device (got {x.device}); on CPU set "
                           f"TRITON_INTERPRET=1 (float32 only) or use the torch path")
    check_interpreter()


def _conv_config(device: torch.device, dtype: torch.dtype) -> tuple[int, int, int, int, int]:
    """(BLOCK_T, BLOCK_CO, BLOCK_CI, num_warps, num_stages): one fixed config, no autotune on the CPU path. On a
    GPU it fits an A100's 163 KiB of shared memory a block (``kernels.aot_check`` checks): float32 tiles at
    the half-precision config would need 288 KiB."""
    if device.type != "cuda":
        return 16, 32, 32, 4, 1
    return (64, 128, 32, 8, 2) if dtype == torch.float32 else (64, 128, 64, 8, 3)


def _conv_forward(x, weight, bias, stride, groups, eps):
    b, c_in, t_in = x.shape
    c_out, _, k = weight.shape
    t_out = -(-t_in // stride)
    weight = weight.contiguous()
    z = _empty(b, t_out, c_out, device=x.device, dtype=torch.float32)
    bt, bco, bci, warps, stages = _conv_config(x.device, x.dtype)
    grid = (triton.cdiv(t_out, bt), triton.cdiv(c_out, bco), b)
    _conv_fwd[grid](x, weight, bias if bias is not None else weight, z, x.stride(0), x.stride(1), x.stride(2),
                    c_in, c_out, t_in, t_out, KSIZE=k, STRIDE=stride, HAS_BIAS=bias is not None, BLOCK_T=bt,
                    BLOCK_CO=bco, BLOCK_CI=bci, PRECISION="ieee" if x.dtype == torch.float32 else None,
                    num_warps=warps, num_stages=stages, **COMPILE_OPTIONS)
    group = c_out // groups
    rows = b * t_out * groups
    y = _empty(b, t_out, c_out, device=x.device, dtype=x.dtype)
    mean = _empty(rows, device=x.device, dtype=torch.float32)
    rstd = _empty(rows, device=x.device, dtype=torch.float32)
    _ln_silu_fwd[(rows,)](z, y, mean, rstd, group, eps, BLOCK=min(1024, triton.next_power_of_2(group)),
                          **COMPILE_OPTIONS)
    return y, z, mean, rstd


class CausalConvLNSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, groups, eps):
        y, z, mean, rstd = _conv_forward(x, weight, bias, stride, groups, eps)
        ctx.save_for_backward(x, weight, z, mean, rstd)
        ctx.stride, ctx.groups, ctx.has_bias = stride, groups, bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, weight, z, mean, rstd = ctx.saved_tensors
        c_out, _, k = weight.shape
        group = c_out // ctx.groups
        dz = _empty(*z.shape, device=z.device, dtype=z.dtype)
        _ln_silu_bwd[(mean.numel(),)](z, dy.contiguous(), mean, rstd, dz, group,
                                      BLOCK=min(1024, triton.next_power_of_2(group)), **COMPILE_OPTIONS)
        x_pad = F.pad(x, (k - 1, 0), mode="replicate")
        dz_t = dz.transpose(1, 2).to(x.dtype)
        dx_pad, dw, db = torch.ops.aten.convolution_backward(
            dz_t, x_pad, weight, [c_out] if ctx.has_bias else None, [ctx.stride], [0], [1], False, [0], 1,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]])
        dx = None
        if dx_pad is not None:
            # the replicated left pad reads x[..., 0]; its gradient folds back there
            dx = dx_pad[..., k - 1:].clone()
            dx[..., 0] += dx_pad[..., :k - 1].sum(-1)
        return dx, dw, db, None, None, None


def causal_conv_ln_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                        groups: int = 1, eps: float = 1e-6) -> torch.Tensor:
    """Triton path: [B, C_in, T] -> SiLU(LayerNorm_groups(causal_conv(x))) as [B, T_out, C_out]."""
    _check(x, weight, bias, stride, groups)
    return CausalConvLNSiLU.apply(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), stride, groups,
                                  eps)


__all__ = ["CausalConvLNSiLU", "causal_conv_ln_silu"]
