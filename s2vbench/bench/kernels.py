"""Kernel benchmarks and GPU correctness checks: our Triton attention and causal conv against torch.

Attention FLOPs: 4 B H Nq Nk D for the forward, 2.5x that for the backward. GPU timings use
``triton.testing.do_bench`` (median over repetitions, warm-up excluded); CPU timings use perf_counter
(median, first call excluded). Without CUDA, Triton rows are recorded as not_measured: the Triton
interpreter is a correctness tool, not a performance one.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .results import Metric, Record


@dataclass(frozen=True)
class AttnShape:
    """One attention problem in the model's [B, N, H, D] layout."""

    name: str
    """Label, e.g. "wan-32k" or "ring-block"."""
    batch: int
    """B."""
    heads: int
    """H."""
    q_len: int
    """Nq."""
    kv_len: int
    """Nk."""
    head_dim: int
    """D."""

    def flops(self, backward: bool = False) -> float:
        f = 4.0 * self.batch * self.heads * self.q_len * self.kv_len * self.head_dim
        return 2.5 * f if backward else f


def wan_attention_shapes() -> list[AttnShape]:
    """Wan-S2V-14B self-attention (H=40, D=128) from 4k to 80k tokens, and the per-rank shapes of the paper's
    8-GPU run at 44,544 tokens: Ulysses (all tokens, 40/8 = 5 heads) and ring (blocks of 44,544/8 = 5,568)."""
    shapes = [AttnShape(f"wan-{n // 1024}k" if n % 1024 == 0 else f"wan-{n}", 1, 40, n, n, 128)
              for n in (4096, 8192, 16384, 32768, 65536, 80000)]
    shapes.append(AttnShape("ulysses8-rank", 1, 5, 44544, 44544, 128))
    shapes.append(AttnShape("ring8-block", 1, 40, 5568, 5568, 128))
    return shapes


def smoke_attention_shapes() -> list[AttnShape]:
    return [AttnShape("smoke", 1, 2, 256, 256, 64)]


@dataclass(frozen=True)
class Timing:
    """Repeated timings of one call, in milliseconds."""

    median_ms: float
    min_ms: float
    max_ms: float
    n: int
    how: str


def time_call(fn: Callable[[], object], device: torch.device, reps: int = 5) -> Timing:
    if device.type == "cuda":
        import triton.testing

        times = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="all")
        return Timing(statistics.median(times), min(times), max(times), len(times),
                      "triton.testing.do_bench (CUDA events, L2 flushed), warm-up 25 ms excluded, median")
    fn()  # first call excluded
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return Timing(statistics.median(times), min(times), max(times), reps,
                  f"time.perf_counter, first call excluded, median of {reps}")


def _sdpa_providers(device: torch.device) -> dict[str, object]:
    from torch.nn.attention import SDPBackend

    if device.type != "cuda":
        return {"sdpa_math_cpu": None}
    return {"sdpa_cudnn": SDPBackend.CUDNN_ATTENTION, "sdpa_flash": SDPBackend.FLASH_ATTENTION}


def _attention_fns(provider: str, q, k, v, device: torch.device):
    """The forward of one provider as a closure over q/k/v [B, N, H, D] leaves."""
    if provider.startswith("triton"):
        from ..kernels.attention import flash_attention_with_lse

        variant = {"triton": "pointer", "triton_tma": "tma", "triton_tma_ws": "tma_ws"}[provider]

        def fwd():
            return flash_attention_with_lse(q, k, v, variant=variant)[0]
    elif provider == "flash_attn":
        from flash_attn import flash_attn_func  # optional peer: only when it imports

        def fwd():
            return flash_attn_func(q, k, v)
    else:
        backend = _sdpa_providers(device)[provider]

        def fwd():
            qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
            if backend is None:
                return F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2)
            from torch.nn.attention import sdpa_kernel

            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(qt, kt, vt).transpose(1, 2)
    return fwd


def attention_providers(device: torch.device) -> list[str]:
    providers = ["triton", "triton_tma", "triton_tma_ws"] + list(_sdpa_providers(device))
    try:
        import flash_attn  # noqa: F401

        providers.append("flash_attn")
    except Exception:
        pass
    return providers


def attention_benchmark(shape: AttnShape, provider: str, dtype: torch.dtype, device: torch.device) -> Record:
    """Forward, backward and forward+backward time and TFLOP/s of one provider on one shape."""
    config = {"shape": asdict(shape), "provider": provider, "dtype": str(dtype).replace("torch.", ""),
              "device": str(device)}
    name = f"attention/{shape.name}/{provider}/{config['dtype']}"
    if provider.startswith("triton") and device.type != "cuda":
        why = "needs CUDA: on CPU the Triton kernels run only in the interpreter, which is for correctness"
        return Record("attention_kernel", name, config,
                      [Metric(f"{p}_time", None, "ms", why, status="not_measured") for p in ("fwd", "bwd", "fwd_bwd")])
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(shape.batch, n, shape.heads, shape.head_dim, generator=g, device=device, dtype=dtype)
               .requires_grad_() for n in (shape.q_len, shape.kv_len, shape.kv_len))
    fwd = _attention_fns(provider, q, k, v, device)
    out = fwd()
    dout = torch.randn_like(out)

    def bwd():
        torch.autograd.grad(out, (q, k, v), dout, retain_graph=True)

    def fwd_bwd():
        torch.autograd.grad(fwd(), (q, k, v), dout)

    metrics = []
    with torch.no_grad():
        t_fwd = time_call(fwd, device)
    t_bwd = time_call(bwd, device)
    t_all = time_call(fwd_bwd, device)
    for label, timing, flops in (("fwd", t_fwd, shape.flops()), ("bwd", t_bwd, shape.flops(True)),
                                 ("fwd_bwd", t_all, shape.flops() + shape.flops(True))):
        metrics.append(Metric(f"{label}_time", timing.median_ms, "ms", timing.how,
                              stats={"min": timing.min_ms, "max": timing.max_ms, "n": timing.n}))
        metrics.append(Metric(f"{label}_tflops", flops / (timing.median_ms * 1e-3) / 1e12, "TFLOP/s",
                              f"{flops:.4g} FLOP (4BHNqNkD fwd, 2.5x bwd) / median {label}_time"))
    return Record("attention_kernel", name, config, metrics)


def _chunked_reference(q, k, v, dout, chunk: int = 2048):
    """float64 attention forward and backward over query chunks (the full score matrix would not fit)."""
    from ..kernels.attention import attention_backward_reference, attention_reference

    q64, k64, v64, do64 = (t.double() for t in (q, k, v, dout))
    outs, lses, dqs = [], [], []
    dk = torch.zeros_like(k64)
    dv = torch.zeros_like(v64)
    for s in range(0, q.shape[1], chunk):
        o, l = attention_reference(q64[:, s:s + chunk], k64, v64)
        gq, gk, gv = attention_backward_reference(do64[:, s:s + chunk], q64[:, s:s + chunk], k64, v64, o, l.double())
        outs.append(o)
        lses.append(l)
        dqs.append(gq)
        dk += gk
        dv += gv
    return torch.cat(outs, 1), torch.cat(lses, 2), torch.cat(dqs, 1), dk, dv


RING_LOCAL_VARIANT = "ring2_torch_local"
"""Not a kernel variant: the ``torch`` local attention of Ulysses and ring (aten's flash attention on a GPU)
over two key blocks, merged, and each block's backward from the merged (out, lse), as ``parallel/ring.py``
runs it."""


def _ring_local(q, k, v, dout):
    from ..kernels.attention import merge_attention
    from ..parallel.local_attention import local_backward, local_forward

    half = k.shape[1] // 2
    blocks = [(k[:, :half], v[:, :half]), (k[:, half:], v[:, half:])]
    parts = [local_forward(q, kb, vb, "torch") for kb, vb in blocks]
    out, lse = merge_attention(*parts[0], *parts[1])
    out = out.to(q.dtype)
    grads = [local_backward(dout, q, kb, vb, out, lse, "torch") for kb, vb in blocks]
    dq = sum(g[0].float() for g in grads).to(q.dtype)
    return out, lse, (dq, torch.cat([g[1] for g in grads], 1), torch.cat([g[2] for g in grads], 1))


def attention_correctness(n: int, dtype: torch.dtype, device: torch.device, heads: int = 2, head_dim: int = 128,
                          variants: tuple[str, ...] = ("pointer", "tma", "tma_ws", RING_LOCAL_VARIANT)
                          ) -> list[Record]:
    """Errors of out, lse, dq, dk, dv against float64, next to torch SDPA's in the same dtype (the 2x rule):
    our kernels' forward variants, and :data:`RING_LOCAL_VARIANT`."""
    from ..kernels.attention import attention_backward, attention_forward, attention_reference

    g = torch.Generator(device=device).manual_seed(0)
    q, k, v, dout = (torch.randn(1, n, heads, head_dim, generator=g, device=device, dtype=dtype) for _ in range(4))
    out64, lse64, dq64, dk64, dv64 = _chunked_reference(q, k, v, dout)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    sdpa = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in leaves)).transpose(1, 2)
    torch_grads = torch.autograd.grad(sdpa, leaves, dout)
    torch_errs = {"out": sdpa, "dq": torch_grads[0], "dk": torch_grads[1], "dv": torch_grads[2]}
    torch_errs = {k_: (t.double() - ref).abs().max().item()
                  for (k_, t), ref in zip(torch_errs.items(), (out64, dq64, dk64, dv64))}
    lse_rows = min(n, 2048)  # torch has no lse output; its own reference in this dtype, on the first rows
    lse_same = attention_reference(q[:, :lse_rows], k, v)[1]
    torch_errs["lse"] = (lse_same.double() - lse64[..., :lse_rows]).abs().max().item()
    records = []
    for variant in variants:
        name = f"attention-correctness/{variant}/{n}/{dtype}"
        config = {"n": n, "heads": heads, "head_dim": head_dim, "dtype": str(dtype), "variant": variant}
        try:
            if variant == RING_LOCAL_VARIANT:
                out, lse, grads = _ring_local(q, k, v, dout)
            else:
                out, lse = attention_forward(q, k, v, variant=variant)
                grads = attention_backward(dout, q, k, v, out, lse)
        except Exception as e:  # one variant this GPU or Triton rejects must not cost the others their check
            records.append(Record("attention_correctness", name, config, [Metric.failed("passed", "1", e)]))
            continue
        ours = {"out": out, "lse": lse[..., :lse_rows], "dq": grads[0], "dk": grads[1], "dv": grads[2]}
        refs = {"out": out64, "lse": lse64[..., :lse_rows], "dq": dq64, "dk": dk64, "dv": dv64}
        metrics = []
        passed = True
        for key in ("out", "lse", "dq", "dk", "dv"):
            err = (ours[key].double() - refs[key]).abs().max().item()
            ok = err <= 2 * torch_errs[key] + 1e-6 * max(1.0, refs[key].abs().max().item())
            passed &= ok and not ours[key].isnan().any().item()
            metrics.append(Metric(f"{key}_max_abs_err", err, "1", "max |ours - float64 reference|",
                                  stats={"torch_same_dtype": torch_errs[key], "within_2x_rule": float(ok)}))
        metrics.append(Metric("passed", float(passed), "1", "every error within 2x torch's own + 1e-6 floor"))
        records.append(Record("attention_correctness", name, config, metrics))
    return records


@dataclass(frozen=True)
class ConvShape:
    """One fused causal-conv unit of the audio encoder."""

    name: str
    batch: int
    c_in: int
    c_out: int
    t: int
    stride: int
    groups: int


def wan_conv_shapes(scale: int = 1) -> list[ConvShape]:
    """The 14b audio encoder at infer_frames=80 (T = 73 + 80 = 153): conv1_local, conv2 on the 4 local token
    streams, conv3 on them (``scale`` divides the channel counts for smoke runs)."""
    d = 5120 // scale
    return [ConvShape("conv1_local", 1, 1024 // scale, d, 153, 1, 4),
            ConvShape("conv2", 4, d // 4, d // 2, 153, 2, 1),
            ConvShape("conv3", 4, d // 2, d, 77, 2, 1)]


def conv_benchmark(shape: ConvShape, dtype: torch.dtype, device: torch.device) -> Record:
    """Our fused op vs the torch eager sequence (pad, conv1d, transpose, layer_norm, silu), forward, in us."""
    from ..kernels.causal_conv import causal_conv_ln_silu_reference

    config = {"shape": asdict(shape), "dtype": str(dtype), "device": str(device)}
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape.batch, shape.c_in, shape.t, generator=g, device=device, dtype=dtype)
    w = torch.randn(shape.c_out, shape.c_in, 3, generator=g, device=device, dtype=dtype) / math.sqrt(3 * shape.c_in)
    b = torch.randn(shape.c_out, generator=g, device=device, dtype=dtype)
    with torch.no_grad():
        t_ref = time_call(lambda: causal_conv_ln_silu_reference(x, w, b, shape.stride, shape.groups), device)
        metrics = [Metric("torch_time", 1e3 * t_ref.median_ms, "us", t_ref.how,
                          stats={"min": 1e3 * t_ref.min_ms, "max": 1e3 * t_ref.max_ms, "n": t_ref.n})]
        if device.type == "cuda":
            from ..kernels.causal_conv.triton_op import causal_conv_ln_silu

            t_ours = time_call(lambda: causal_conv_ln_silu(x, w, b, shape.stride, shape.groups), device)
            metrics.append(Metric("triton_time", 1e3 * t_ours.median_ms, "us", t_ours.how,
                                  stats={"min": 1e3 * t_ours.min_ms, "max": 1e3 * t_ours.max_ms, "n": t_ours.n}))
            metrics.append(Metric("speedup_vs_torch", t_ref.median_ms / t_ours.median_ms, "1",
                                  "torch_time / triton_time, medians measured side by side"))
        else:
            metrics.append(Metric("triton_time", None, "us", "needs CUDA (interpreter is for correctness only)",
                                  status="not_measured"))
    return Record("causal_conv_kernel", f"causal-conv/{shape.name}/{dtype}", config, metrics)


__all__ = ["AttnShape", "ConvShape", "Timing", "attention_benchmark", "attention_correctness", "attention_providers",
           "conv_benchmark", "smoke_attention_shapes", "time_call", "wan_attention_shapes", "wan_conv_shapes"]
