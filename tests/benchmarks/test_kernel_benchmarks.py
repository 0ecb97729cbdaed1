"""Kernel benchmarks as pytest-benchmark tests, for a kernel regression job: ``pytest --benchmark-only``.

On a GPU they time Wan's shape (H=40, D=128) in bf16; on CPU (and under xdist, where pytest-benchmark runs each
once) they run tiny float32 shapes, Triton in the interpreter, so the suite still checks they work."""

import pytest
import torch

from conftest import DEVICE, ON_GPU
from s2vbench.bench.kernels import AttnShape, wan_conv_shapes

SHAPE = AttnShape("wan-16k", 1, 40, 16384, 16384, 128) if ON_GPU else AttnShape("cpu", 1, 2, 64, 64, 32)
DTYPE = torch.bfloat16 if ON_GPU else torch.float32


def _sync(fn):
    def run():
        out = fn()
        if ON_GPU:
            torch.cuda.synchronize()
        return out
    return run


@pytest.fixture(scope="module")
def qkv():
    g = torch.Generator(device=DEVICE).manual_seed(0)
    return [torch.randn(SHAPE.batch, n, SHAPE.heads, SHAPE.head_dim, generator=g, device=DEVICE, dtype=DTYPE)
            .requires_grad_() for n in (SHAPE.q_len, SHAPE.kv_len, SHAPE.kv_len)]


def _forward(provider, q, k, v):
    if provider == "triton":
        from s2vbench.kernels.attention import flash_attention
        return lambda: flash_attention(q, k, v)
    return lambda: torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


@pytest.mark.parametrize("provider", ["triton", "sdpa"])
def test_attention_forward(benchmark, qkv, provider):
    fwd = _forward(provider, *qkv)
    benchmark.extra_info.update(flops=SHAPE.flops(), shape=vars(SHAPE), dtype=str(DTYPE))
    with torch.no_grad():
        out = benchmark(_sync(fwd))
    assert out.shape == qkv[0].shape and torch.isfinite(out).all()


@pytest.mark.parametrize("provider", ["triton", "sdpa"])
def test_attention_forward_backward(benchmark, qkv, provider):
    fwd = _forward(provider, *qkv)
    dout = torch.ones_like(qkv[0])
    benchmark.extra_info.update(flops=3.5 * SHAPE.flops(), shape=vars(SHAPE), dtype=str(DTYPE))
    grads = benchmark(_sync(lambda: torch.autograd.grad(fwd(), qkv, dout)))
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("impl", ["triton", "torch"])
def test_causal_conv(benchmark, impl):
    from s2vbench.kernels.causal_conv import causal_conv_ln_silu_reference

    shape = wan_conv_shapes(scale=1 if ON_GPU else 32)[2]
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(shape.batch, shape.c_in, shape.t, generator=g, device=DEVICE, dtype=DTYPE)
    w = torch.randn(shape.c_out, shape.c_in, 3, generator=g, device=DEVICE, dtype=DTYPE) * 0.05
    b = torch.zeros(shape.c_out, device=DEVICE, dtype=DTYPE)
    if impl == "triton":
        from s2vbench.kernels.causal_conv.triton_op import causal_conv_ln_silu as fn
    else:
        fn = causal_conv_ln_silu_reference
    with torch.no_grad():
        y = benchmark(_sync(lambda: fn(x, w, b, shape.stride, shape.groups)))
    assert y.shape == (shape.batch, -(-shape.t // shape.stride), shape.c_out)
