"""flash-attn as the context-parallel local attention: the clear error without the gpu extra, and the dispatch
path against a fake ``flash_attn`` written in plain torch (flash-attn's documented API: [B, N, H, D] q/k/v/out,
``flash_attn_func(..., return_attn_probs=True) -> (out, softmax_lse [B, H, Nq] float32, S_dmask)``)."""

import math
import sys
import types

import pytest
import torch

from s2vbench.parallel.launch import run_ranks
from s2vbench.parallel.local_attention import local_backward, local_forward

B, H, D = 2, 4, 16


def _fake_flash_attn(with_backward: bool, pad_lse: bool = False) -> types.ModuleType:
    """A stand-in for flash-attn 2: the math in float32 from bf16/fp16 inputs, outputs in the input dtype."""
    calls = {"fwd": 0, "bwd": 0}

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, return_attn_probs=False):
        assert q.dtype in (torch.float16, torch.bfloat16) and dropout_p == 0.0 and not causal
        calls["fwd"] += 1
        scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
        s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * scale
        lse = torch.logsumexp(s, dim=-1)  # [B, H, Nq]
        out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, dim=-1), v.float()).to(q.dtype)
        if pad_lse:  # older versions round Nq up to a multiple of 128
            lse = torch.nn.functional.pad(lse, (0, 128 - lse.shape[-1] % 128), value=float("nan"))
        return (out, lse, None) if return_attn_probs else out

    def _flash_attn_backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, dropout_p, softmax_scale, causal,
                             window_size_left, window_size_right, softcap, alibi_slopes, deterministic,
                             rng_state=None):
        calls["bwd"] += 1
        assert softmax_lse.dtype == torch.float32 and softmax_lse.shape == (q.shape[0], q.shape[2], q.shape[1])
        s = torch.einsum("bqhd,bkhd->bhqk", q.float(), k.float()) * softmax_scale
        p = torch.exp(s - softmax_lse[..., None])
        do = dout.float()
        dv.copy_(torch.einsum("bhqk,bqhd->bkhd", p, do))
        dp = torch.einsum("bqhd,bkhd->bhqk", do, v.float())
        delta = (do * out.float()).sum(-1).transpose(1, 2)[..., None]  # [B, H, Nq, 1]
        ds = p * (dp - delta) * softmax_scale
        dq.copy_(torch.einsum("bhqk,bkhd->bqhd", ds, k.float()))
        dk.copy_(torch.einsum("bhqk,bqhd->bkhd", ds, q.float()))
        return torch.empty(0)

    iface = types.ModuleType("flash_attn.flash_attn_interface")
    iface.flash_attn_func = flash_attn_func
    if with_backward:
        iface._flash_attn_backward = _flash_attn_backward
    pkg = types.ModuleType("flash_attn")
    pkg.flash_attn_interface = iface
    pkg.flash_attn_func = flash_attn_func
    pkg.calls = calls
    return pkg


def _install(monkeypatch, module):
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    monkeypatch.setitem(sys.modules, "flash_attn.flash_attn_interface", module.flash_attn_interface)


def _inputs(nq=24, nk=40, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, dout = (torch.randn(B, nq, H, D, generator=g) for _ in range(2))
    k, v = (torch.randn(B, nk, H, D, generator=g) for _ in range(2))
    return [t.to(dtype) for t in (q, k, v, dout)]


def _float64_reference(q, k, v, dout):
    q, k, v = (t.double().requires_grad_() for t in (q, k, v))
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    out = torch.einsum("bhqk,bkhd->bqhd", torch.softmax(s, dim=-1), v)
    out.backward(dout.double())
    return out.detach(), torch.logsumexp(s, dim=-1).detach(), q.grad, k.grad, v.grad


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_without_flash_attn_the_error_names_the_gpu_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "flash_attn", None)  # import flash_attn -> ImportError, installed or not
    q, k, v, dout = _inputs()
    with pytest.raises(ImportError, match=r"flash-attn.*'gpu' extra"):
        local_forward(q, k, v, "flash_attn")
    with pytest.raises(ImportError, match="gpu"):
        local_backward(dout, q, k, v, q, torch.zeros(B, H, q.shape[1]), "flash_attn")
    with pytest.raises(ValueError, match="choose one of"):
        local_forward(q, k, v, "flash")


@pytest.mark.parametrize("with_backward", [True, False])
def test_flash_dispatch_matches_the_torch_backend(monkeypatch, with_backward):
    fake = _fake_flash_attn(with_backward, pad_lse=not with_backward)
    _install(monkeypatch, fake)
    q, k, v, dout = _inputs()
    out, lse = local_forward(q, k, v, "flash_attn")
    assert out.dtype == torch.bfloat16 and out.shape == q.shape
    assert lse.dtype == torch.float32 and lse.shape == (B, H, q.shape[1])  # [B, H, Nq], padding dropped
    grads = local_backward(dout, q, k, v, out, lse, "flash_attn")
    assert fake.calls == {"fwd": 1, "bwd": 1 if with_backward else 0}  # without the kernel: reference backward
    t_out, t_lse = local_forward(q, k, v, "torch")
    t_grads = local_backward(dout, q, k, v, t_out, t_lse, "torch")
    ref = _float64_reference(q, k, v, dout)
    for name, ours, theirs, want in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, *grads),
                                        (t_out, t_lse, *t_grads), ref):
        assert ours.dtype == theirs.dtype, name
        # bf16 inputs: both backends are a bf16 rounding away from float64; flash no further than torch + 1%
        assert _rel(ours, want) <= _rel(theirs, want) + 1e-2, (name, _rel(ours, want), _rel(theirs, want))
    assert _rel(lse, ref[1]) < 1e-5  # the lse is computed in float32 from the same bf16 inputs


def test_flash_computes_in_half_precision_only(monkeypatch):
    _install(monkeypatch, _fake_flash_attn(True))
    q, k, v, _ = _inputs(dtype=torch.float32)
    with pytest.raises(ValueError, match="float16/bfloat16 only.*bfloat16"):
        local_forward(q, k, v, "flash_attn")


def ring_worker(rank, world, seq_len):
    """2-rank ring attention with the fake flash-attn and with torch, on the same bf16 chunk."""
    sys.modules["flash_attn"] = fake = _fake_flash_attn(True)
    sys.modules["flash_attn.flash_attn_interface"] = fake.flash_attn_interface
    from s2vbench.parallel.mesh import ParallelConfig, build_mesh
    from s2vbench.parallel.sequence_parallel import CPAttention, context_parallel_attention, padded_length

    pm = build_mesh(ParallelConfig(ring=world), num_heads=H)
    padded = padded_length(seq_len, world)
    chunk = padded // world
    q, k, v, dout = (torch.nn.functional.pad(t, (0, 0, 0, 0, 0, padded - seq_len)) for t in _inputs(seq_len, seq_len))
    sl = slice(rank * chunk, (rank + 1) * chunk)
    out = {}
    for backend in ("flash_attn", "torch"):
        ql, kl, vl = (t[:, sl].clone().requires_grad_() for t in (q, k, v))
        o, _ = context_parallel_attention(ql, kl, vl, CPAttention(pm.cp, backend), seq_len)
        o.backward(dout[:, sl])
        out[backend] = [o.detach(), ql.grad, kl.grad, vl.grad]
    return rank * chunk, out, dict(fake.calls)


def test_two_rank_ring_with_flash_local_attention():
    seq = 37  # uneven: the last chunk holds padded keys, masked by slicing before the local attention
    q, k, v, dout = _inputs(seq, seq)
    ref = _float64_reference(q, k, v, dout)
    for start, out, calls in run_ranks(ring_worker, 2, seq, timeout_s=120):
        assert calls["fwd"] == 2 and calls["bwd"] == 2  # one local attention per ring step, both ways
        rows = max(0, min(out["torch"][0].shape[1], seq - start))
        for i, name in enumerate(("out", "dq", "dk", "dv")):
            want = (ref[0], *ref[2:])[i][:, start:start + rows]
            flash, torch_ = out["flash_attn"][i][:, :rows], out["torch"][i][:, :rows]
            assert _rel(flash, want) <= _rel(torch_, want) + 1e-2, (name, _rel(flash, want), _rel(torch_, want))


def test_aten_flash_calls_match_the_installed_torch():
    # meta tensors run aten's shape functions: the calls' arguments and outputs as this torch defines them
    # (their numerics need a GPU: the next test)
    from s2vbench.parallel.local_attention import aten_flash_backward, aten_flash_forward

    q, k, v, dout = (torch.empty(1, n, 5, 128, device="meta", dtype=torch.bfloat16) for n in (96, 160, 160, 96))
    out, lse = aten_flash_forward(q, k, v)
    assert out.shape == q.shape and out.dtype == q.dtype and lse.shape == (1, 5, 96) and lse.dtype == torch.float32
    dq, dk, dv = aten_flash_backward(dout, q, k, v, out, lse)
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape) and dq.dtype == torch.bfloat16


def test_torch_backend_takes_aten_flash_only_where_it_applies():
    from s2vbench.parallel.local_attention import aten_flash_applies

    assert not aten_flash_applies(torch.empty(1, 8, 2, 64, dtype=torch.bfloat16))  # CPU: aten's CPU kernel
    if torch.cuda.is_available():
        assert aten_flash_applies(torch.empty(1, 8, 2, 64, dtype=torch.bfloat16, device="cuda")) == (
            torch.cuda.get_device_capability() >= (8, 0))
        assert not aten_flash_applies(torch.empty(1, 8, 2, 64, device="cuda"))  # float32: the reference
        assert not aten_flash_applies(torch.empty(1, 8, 2, 12, dtype=torch.bfloat16, device="cuda"))


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
                    reason="aten's CUDA flash attention needs an Ampere or later GPU")
def test_aten_flash_on_gpu_is_as_close_to_float64_as_torch_in_bf16():
    from s2vbench.kernels.attention import attention_backward_reference, attention_reference

    q, k, v, dout = (t.cuda() for t in _inputs(nq=200, nk=328))
    q, k, v, dout = (t.repeat(1, 1, 1, 8) for t in (q, k, v, dout))  # head_dim 128
    out, lse = local_forward(q, k, v, "torch")
    grads = local_backward(dout, q, k, v, out, lse, "torch")
    r_out, r_lse = attention_reference(q, k, v)  # plain torch in bf16
    r_grads = attention_backward_reference(dout, q, k, v, r_out, r_lse)
    ref = _float64_reference(q, k, v, dout)
    for name, ours, plain, want in zip(("out", "lse", "dq", "dk", "dv"), (out, lse, *grads), (r_out, r_lse, *r_grads),
                                       ref):
        assert _rel(ours, want) <= 2 * _rel(plain, want) + 1e-5, (name, _rel(ours, want), _rel(plain, want))
    # as ring attention uses it: each key block's backward from the merged (global) out and lse
    from s2vbench.bench.kernels import _ring_local

    m_out, m_lse, m_grads = _ring_local(q, k, v, dout)
    for name, ours, plain, want in zip(("out", "lse", "dq", "dk", "dv"), (m_out, m_lse, *m_grads),
                                       (r_out, r_lse, *r_grads), ref):
        assert _rel(ours, want) <= 2 * _rel(plain, want) + 1e-5, ("merged " + name, _rel(ours, want), _rel(plain, want))


def test_aten_flash_backward_refuses_an_lse_of_the_wrong_shape():
    from s2vbench.parallel.local_attention import aten_flash_backward

    q = torch.empty(1, 96, 5, 128, device="meta", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"expected \[B, H, Nq\] = \(1, 5, 96\)"):
        aten_flash_backward(q, q, q, q, q, torch.empty(1, 96, 5, device="meta"))
