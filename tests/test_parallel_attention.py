"""Ulysses, ring and USP attention on gloo processes against single-process float64 attention."""

import pytest
import torch

from s2vbench.parallel.launch import run_ranks

B, H, D = 2, 4, 16


def make_inputs(seq_len, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, seq_len, H, D, generator=g) for _ in range(4)]  # q, k, v, dout


def reference(seq_len):
    from s2vbench.kernels.attention import attention_reference

    q, k, v, dout = (t.double().requires_grad_() for t in make_inputs(seq_len))
    out, _ = attention_reference(q, k, v)
    out.backward(dout.detach())
    return out.detach(), q.grad, k.grad, v.grad


def cp_worker(rank, world, layouts, seq_len, backend):
    """For each (ulysses, ring): this rank's out and q/k/v grads on its padded chunk, plus the ring trace."""
    from s2vbench.parallel.comm import count_comm
    from s2vbench.parallel.mesh import ParallelConfig, build_mesh
    from s2vbench.parallel.sequence_parallel import CPAttention, context_parallel_attention, padded_length

    results = {}
    for u, r in layouts:
        pm = build_mesh(ParallelConfig(dp_shard=world // (u * r), ulysses=u, ring=r), num_heads=H)
        cp = pm.cp.size
        padded = padded_length(seq_len, cp)
        chunk = padded // cp
        c = pm.cp.cp_rank()
        q, k, v, dout = (torch.nn.functional.pad(t, (0, 0, 0, 0, 0, padded - seq_len)) for t in make_inputs(seq_len))
        dout[:, seq_len:] = 0  # padded queries feed nothing
        sl = slice(c * chunk, (c + 1) * chunk)
        ql, kl, vl = (t[:, sl].clone().requires_grad_() for t in (q, k, v))
        trace = []
        with count_comm() as counter:
            out, _ = context_parallel_attention(ql, kl, vl, CPAttention(pm.cp, backend, trace), seq_len)
            out.backward(dout[:, sl])
        results[(u, r)] = dict(start=c * chunk, out=out.detach(), dq=ql.grad, dk=kl.grad, dv=vl.grad, trace=trace,
                               stats={k_: vars(s) for k_, s in counter.stats.items()},
                               fake_mismatches=_fake_mismatches(CPAttention(pm.cp, backend), ql, kl, vl, seq_len))
    return results


def _fake_mismatches(cp, q, k, v, seq_len):
    """Outputs whose shape, stride or dtype the op's fake implementation (what torch.compile and the meta-device
    count trace with) gets wrong, against a real call."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    args = [t.detach() for t in (q, k, v)]
    real = torch.ops.s2vbench.cp_attention(*args, cp.key, seq_len)
    with FakeTensorMode() as mode:
        fake = torch.ops.s2vbench.cp_attention(*(mode.from_tensor(t) for t in args), cp.key, seq_len)
    def layout(t):  # a size-1 dimension's stride is arbitrary: torch ignores it, and so does this check
        return tuple(t.shape), t.dtype, tuple(st for st, n in zip(t.stride(), t.shape) if n > 1)

    names = ("out", "lse", "q_h", "k_h", "v_h", "out_h")
    return [(n, layout(a), layout(b)) for n, a, b in zip(names, real, fake) if layout(a) != layout(b)]


def check(results, seq_len, tol=1e-5):
    ref = reference(seq_len)
    for rank_res in results:
        for layout, res in rank_res.items():
            a, n = res["start"], res["out"].shape[1]
            assert res["fake_mismatches"] == [], (layout, res["fake_mismatches"])
            rows = max(0, min(n, seq_len - a))  # real tokens in this chunk
            for name, ours, want in zip(("out", "dq", "dk", "dv"), (res["out"], res["dq"], res["dk"], res["dv"]), ref):
                got, exp = ours[:, :rows].double(), want[:, a:a + rows]
                if rows:
                    err = (got - exp).norm() / exp.norm()
                    assert err < tol, (layout, name, float(err))
                if name in ("dk", "dv"):  # padded keys are never attended: exactly zero gradient
                    assert torch.equal(ours[:, rows:], torch.zeros_like(ours[:, rows:])), (layout, name)


def test_two_ranks_ulysses_and_ring_with_an_uneven_length():
    results = run_ranks(cp_worker, 2, [(2, 1), (1, 2)], 37, "torch", timeout_s=120)
    check(results, 37)
    trace = results[0][(1, 2)]["trace"]
    fwd = trace[:trace.index("attn 1") + 1]
    # double buffering: the receive for step 1 is posted before step 0's attention, waited on after it
    assert fwd == ["post kv1", "attn 0", "wait kv1", "attn 1"], trace
    stats = results[0][(2, 1)]["stats"]
    assert set(stats) == {"all_to_all"} and stats["all_to_all"]["calls"] == 8  # q, k, v, out; and back
    assert {"ring_p2p", "ring_p2p_bwd"} <= set(results[0][(1, 2)]["stats"])


def test_four_ranks_every_factorisation():
    layouts = [(4, 1), (1, 4), (2, 2)]
    check(run_ranks(cp_worker, 4, layouts, 29, "torch", timeout_s=180), 29)   # 29 -> padded to 32
    check(run_ranks(cp_worker, 4, [(2, 1), (1, 2)], 23, "torch", timeout_s=180), 23)  # dp 2 x cp 2


def test_two_rank_ring_on_the_triton_interpreter():
    results = run_ranks(cp_worker, 2, [(1, 2)], 37, "triton", timeout_s=180)
    check(results, 37)


def test_invalid_configs_fail_before_any_communication():
    from s2vbench.parallel.mesh import ParallelConfig, ParallelConfigError

    with pytest.raises(ParallelConfigError, match="valid degrees: 1, 2, 4, 5, 8, 10, 20, 40"):
        ParallelConfig(ulysses=3).validate(3, num_heads=40)
    with pytest.raises(ParallelConfigError, match="world size 8"):
        ParallelConfig(dp_shard=2, ulysses=2).validate(8, num_heads=40)
    with pytest.raises(ParallelConfigError, match="at most 6 ranks"):
        ParallelConfig(ring=8).validate(8, num_heads=40, seq_len=6)


def peer_worker(rank, world, seq_len):
    """Our ring (r = world) and Ulysses (u = world) next to torch's ring template and DeepSpeed's Ulysses."""
    import torch.distributed as dist

    from s2vbench.parallel.mesh import ParallelConfig, build_mesh
    from s2vbench.parallel.sequence_parallel import CPAttention, context_parallel_attention

    q, k, v, _ = make_inputs(seq_len)
    chunk = seq_len // world
    sl = slice(rank * chunk, (rank + 1) * chunk)
    res = {}
    ring = build_mesh(ParallelConfig(ring=world), num_heads=H)
    ours_ring = context_parallel_attention(q[:, sl], k[:, sl], v[:, sl], CPAttention(ring.cp), seq_len)[0]
    from torch.distributed.tensor.experimental._context_parallel._attention import (_cp_options,
                                                                                      _templated_ring_attention)

    _cp_options.enable_load_balance = False  # its load balancing is for causal masks only
    t = [x[:, sl].transpose(1, 2) for x in (q, k, v)]
    torch_ring = _templated_ring_attention(dist.group.WORLD, 2, torch.ops.aten._scaled_dot_product_flash_attention_for_cpu,
                                           *t, is_causal=False)[0].transpose(1, 2)
    res["ring_vs_torch"] = float((ours_ring - torch_ring).abs().max())
    ulysses = build_mesh(ParallelConfig(ulysses=world), num_heads=H)
    ours_uly = context_parallel_attention(q[:, sl], k[:, sl], v[:, sl], CPAttention(ulysses.cp), seq_len)[0]
    try:
        from deepspeed.sequence.layer import DistributedAttention
    except Exception as e:  # noqa: BLE001 - any import failure means the peer is unavailable
        res["deepspeed"] = f"unavailable: {type(e).__name__}: {e}"
    else:
        def local(qq, kk, vv, *args, **kwargs):
            return torch.nn.functional.scaled_dot_product_attention(
                qq.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2)).transpose(1, 2)

        ds = DistributedAttention(local, dist.group.WORLD, scatter_idx=2, gather_idx=1)
        res["ulysses_vs_deepspeed"] = float((ours_uly - ds(q[:, sl], k[:, sl], v[:, sl])).abs().max())
    return res


def test_matches_torch_ring_attention_and_deepspeed_ulysses():
    results = run_ranks(peer_worker, 2, 32, timeout_s=120)
    for res in results:
        assert res["ring_vs_torch"] < 1e-5, res
    if "deepspeed" in results[0]:
        pytest.skip(f"DeepSpeed's DistributedAttention not compared: deepspeed {results[0]['deepspeed']} "
                    f"(install the 'peers' extra)")
    for res in results:
        assert res["ulysses_vs_deepspeed"] < 1e-5, res
