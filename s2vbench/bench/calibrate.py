"""Calibrate the performance model on microbenchmarks, then validate it on end-to-end steps.

Calibration sees only microbenchmarks: matmuls and attention calls (forward and backward) across sizes
(-> efficiency curves), a streaming add (-> memory bandwidth), a DiT block's elementwise chain forward and
backward (-> the rate of eager elementwise ops), a training step at toy widths, alone and under
FSDP (-> host overhead per dispatched op, plain and sharded), and, on 2 ranks that compute between
collectives as a step does, small all-reduces after growing stretches of compute (-> rank skew, the share of
that compute each collective waits for the slower rank) and collectives across sizes (-> alpha and beta of
each collective kind by least squares, the skew taken out). On a CPU the whole set runs in independent rounds
and each figure is the median over them; the report quotes the spread. End-to-end steps are used only to
validate, plus one fitted constant: a
factor on the modelled elementwise traffic (the model's ops move other sizes in another mix than the
microbenchmark's), fitted on compute-only times. Its error is reported leave-one-out in the style of Calculon: each
point is predicted with the factor fitted on the others. Only points whose step-time IQR/median is under 5%
count; the others are listed as noisy.
"""

from __future__ import annotations

import datetime as _dt
import os
import statistics
import time
from dataclasses import dataclass

import torch

from ..model.cli import path_arg
from .perfmodel import (
    ATTENTION_BACKWARD_FLOPS,
    PlanError,
    Prediction,
    Strategy,
    predict_inference,
    predict_training,
)
from .profiles import COLLECTIVE_KINDS, EfficiencyCurve, HardwareProfile, Link
from .results import Record, step_times

NOISE_LIMIT = 0.05
"""Points whose step-time IQR/median exceeds this are not used for validation."""


def _median_time(fn, repeats: int = 5, warmup: int = 1, cuda: bool = False, min_time: float = 0.05) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls, and more (up to 200 in all) until they add up to
    ``min_time``: a sub-millisecond call timed a handful of times catches one blip of a shared core as its whole
    sample."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    while len(times) < repeats or (sum(times) < min_time and len(times) < 200):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_sweep(device: str = "cpu") -> list[tuple[float, float]]:
    """(FLOPs of one call, achieved FLOP/s) for the model's kind of matmul, [tokens, d] @ [d, d']: float32 on
    CPU (1e6 to 4e9 FLOPs), bf16 on GPU (up to 1.5e12 FLOPs, the 14b's shapes)."""
    cuda = device != "cpu"
    dtype = torch.bfloat16 if cuda else torch.float32
    shapes = ((256, 64, 64), (512, 128, 128), (1024, 256, 256), (2048, 256, 256), (2048, 256, 704),
              (4096, 512, 512), (4096, 512, 1024))
    if cuda:
        shapes = ((1024, 1024, 1024), (4096, 5120, 5120), (5568, 5120, 5120), (5568, 5120, 13824),
                  (44544, 5120, 5120), (44544, 5120, 13824))
    out = []
    for tokens, d, d_out in shapes:
        a, b = torch.randn(tokens, d, dtype=dtype, device=device), torch.randn(d, d_out, dtype=dtype, device=device)
        flops = 2.0 * tokens * d * d_out
        t = _median_time(lambda a=a, b=b: a @ b, repeats=7 if flops < 1e9 else 5, cuda=cuda)
        out.append((flops, flops / t))
    return out


def _attention_shapes(device: str) -> tuple[bool, torch.dtype, list[tuple[int, int, int]]]:
    """(on CUDA, dtype, [(heads, tokens, head_dim)]) of the attention sweeps."""
    if device == "cpu":
        return False, torch.float32, [(4, s, 64) for s in (256, 1024, 2048, 4096)]
    return True, torch.bfloat16, [(40, 5568, 128), (5, 22272, 128), (5, 44544, 128), (40, 44544, 128)]


def attention_sweep(device: str = "cpu") -> list[tuple[float, float]]:
    """(FLOPs of one call, achieved FLOP/s) for torch SDPA: 4 heads of 64 from 256 to 4096 tokens in float32
    on CPU; 5 to 40 heads of 128 from 5,568 to 44,544 tokens in bf16 on GPU (the paper's per-rank shapes)."""
    cuda, dtype, shapes = _attention_shapes(device)
    out = []
    for heads, s, d in shapes:
        q, k, v = (torch.randn(1, heads, s, d, dtype=dtype, device=device) for _ in range(3))
        flops = 4.0 * s * s * heads * d
        t = _median_time(lambda q=q, k=k, v=v: torch.nn.functional.scaled_dot_product_attention(q, k, v),
                         repeats=5, cuda=cuda)
        out.append((flops, flops / t))
    return out


def attention_backward_sweep(device: str = "cpu") -> list[tuple[float, float]]:
    """(forward FLOPs of one call, achieved backward FLOP/s counted at ATTENTION_BACKWARD_FLOPS times them) for
    torch SDPA, at the shapes of :func:`attention_sweep`."""
    cuda, dtype, shapes = _attention_shapes(device)
    out = []
    for heads, s, d in shapes:
        q, k, v = (torch.randn(1, heads, s, d, dtype=dtype, device=device, requires_grad=True) for _ in range(3))
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        g = torch.randn_like(o)
        flops = 4.0 * s * s * heads * d
        t = _median_time(lambda o=o, q=q, k=k, v=v, g=g: torch.autograd.grad(o, (q, k, v), g, retain_graph=True),
                         repeats=3 if flops > 1e10 else 5, cuda=cuda)
        out.append((flops, ATTENTION_BACKWARD_FLOPS * flops / t))
    return out


def memory_bandwidth(device: str = "cpu") -> float:
    """Bytes/s of c = a + b over 64 MiB (CPU) or 1 GiB (GPU) float32 tensors: two reads and a write."""
    n = (256 if device != "cpu" else 16) * 2 ** 20
    a, b = torch.randn(n, device=device), torch.randn(n, device=device)
    c = torch.empty_like(a)
    t = _median_time(lambda: torch.add(a, b, out=c), repeats=5, cuda=device != "cpu")
    return 3 * a.numel() * 4 / t


ELEMENTWISE_SHAPE = {"cpu": (4096, 256), "cuda": (65536, 1024)}
"""[tokens, dim] of the elementwise microbenchmark: 4 MiB float32 activations on a CPU (the small preset's scale;
far larger ones page-fault on every fresh output), 256 MiB on a GPU (the 14b's scale)."""
_ELEMENTWISE_CHAIN = "a DiT block's elementwise chain, forward and backward, on %d x %d float32"


def elementwise_bandwidth(device: str = "cpu") -> float:
    """Bytes/s of a DiT block's elementwise chain, forward and backward, on [tokens, dim] float32 activations
    (``ELEMENTWISE_SHAPE``), each op writing a fresh output as eager mode does: a modulated LayerNorm, an
    RMSNorm, rotary pairs, a tanh GELU, a gated residual. Its bytes are counted as the performance model
    counts the model's (``analytic.count_traffic``), so the two meet in the same units."""
    import torch.nn.functional as F

    from .analytic import count_traffic

    n, d = ELEMENTWISE_SHAPE["cpu" if device == "cpu" else "cuda"]
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*shape, grad=False):
        return torch.randn(*shape, generator=g, device=device).requires_grad_(grad)

    x, mod, w, angle, grad_y = rnd(n, d, grad=True), rnd(3, d, grad=True), rnd(d, grad=True), rnd(n, d // 2), rnd(n, d)
    cos, sin = angle.cos(), angle.sin()

    def chain():
        shift, scale, gate = mod.unbind(0)
        h = F.layer_norm(x, (d,)) * (1 + scale) + shift
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6) * w
        a, b = h.unflatten(-1, (-1, 2)).unbind(-1)
        h = torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)
        y = x + F.gelu(h, approximate="tanh") * gate
        torch.autograd.backward(y, grad_y)
        x.grad = mod.grad = w.grad = None

    chain()
    nbytes = count_traffic(chain)
    return nbytes / _median_time(chain, repeats=7, cuda=device != "cpu")


def op_overhead(hw: HardwareProfile, dp_shard: int = 1) -> float:
    """Seconds of host work per dispatched op: a float32 training step of the tiny preset's structure at toy
    widths (``perfmodel.toy_config``: 32 wide, 2 heads), less what ``hw`` predicts for its matmuls, attention
    and traffic, over the ops it dispatches. The toy step's own mix of module calls, autograd nodes, views and
    small kernels is what the host pays per op in the model's steps; a chain of bare ops pays less than half.
    With ``dp_shard`` > 1 the step runs under FSDP in the process group already initialized (the fake one, as
    :func:`collective_rank` does it)."""
    from ..model import clip_layout, get_preset
    from ..parallel import ParallelConfig
    from .analytic import count_dispatched_ops
    from .perfmodel import toy_training

    tiny = get_preset("tiny")
    step, model, opt, batch, train = toy_training(tiny.model, False, True,
                                                  ParallelConfig(dp_shard) if dp_shard > 1 else None)
    t = _median_time(lambda: step(model, opt, batch, 1, train), repeats=15, warmup=2)
    ops = count_dispatched_ops(lambda: step(model, opt, batch, 1, train))
    toy, clip = model.cfg, tiny.clip  # the clip toy_training runs (with motion)
    lay = clip_layout(toy, clip)
    bare = HardwareProfile(**{**hw.__dict__, "op_overhead": 0.0, "op_overhead_sharded": 0.0, "rank_skew": 0.0,
                              "elementwise_factor": 1.0})
    pred = predict_training(toy, lay, Strategy(dp_shard, ac=False, dtype="float32"), bare, dp_shard)
    return max(t - pred.compute - pred.other, 0.0) / ops  # no communication: the fake group's collectives are no-ops


COLLECTIVE_SIZES = (2 ** 14, 2 ** 18, 2 ** 21, 2 ** 23)
"""Bytes per collective buffer in the sweep (16 KiB to 8 MiB)."""
SKEW_WORK = (5, 20, 80, 320)
"""Compute between two collectives in the rank-skew sweep, in 256 x 256 matmuls (about 0.4 ms each here)."""
COLLECTIVE_WORK = 5
"""Compute before each collective of the sweep, in the same matmuls: a step's collectives meet busy ranks."""


def _loaded_extra(fn, work: int, iterations: int, repeats: int = 3) -> tuple[float, float]:
    """(seconds of ``work`` matmuls, seconds ``fn`` adds after them) per iteration, medians over ``repeats``
    loops with and without ``fn``; both ranks run the same loop, so a collective waits for the slower one."""
    import torch.distributed as dist

    a, b = torch.randn(256, 256), torch.randn(256, 256)

    def loop(with_fn: bool) -> float:
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iterations):
            for _ in range(work):
                a @ b
            if with_fn:
                fn()
        return (time.perf_counter() - t0) / iterations

    loop(True)
    with_, without = [], []
    for _ in range(repeats):
        with_.append(loop(True))
        without.append(loop(False))
    base = statistics.median(without)
    return base, statistics.median(with_) - base


SHARDED_OVERHEAD_RANKS = 2
"""FSDP ranks of the toy step that measures ``HardwareProfile.op_overhead_sharded``."""


def collective_rank(rank: int, world: int, compute: dict | None = None) -> dict:
    """Collectives as a training step meets them, between stretches of compute on every rank:

    * ``skew``: (seconds of compute between two small all-reduces, seconds each all-reduce adds) for
      ``SKEW_WORK``: on shared cores ranks drift apart, and a collective waits for the slowest in proportion
      to the compute since the last one;
    * ``collectives``: (kind, bytes, seconds added) of all_gather, reduce_scatter, all_to_all and p2p after
      ``COLLECTIVE_WORK`` matmuls, across ``COLLECTIVE_SIZES``.

    Given this round's ``compute`` samples (matmul, attention, memory bandwidth), rank 0 then leaves gloo for
    the fake process group and adds ``op_overhead_sharded``: :func:`op_overhead` as rank 0 of
    ``SHARDED_OVERHEAD_RANKS`` FSDP ranks, measured alone (the other ranks have returned), in this process
    rather than a fresh one, which would cost a spawn and torch's import each round."""
    import torch.distributed as dist

    # torch 2.13 renamed these two (the old names warn on every call); older releases have only the old names
    all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    small = torch.zeros(256)
    skew = [_loaded_extra(lambda: dist.all_reduce(small), w, max(3, 900 // w)) for w in SKEW_WORK]
    out = []
    peer = (rank + 1) % world
    for nbytes in COLLECTIVE_SIZES:
        n = nbytes // 4
        full, shard, recv = torch.randn(n), torch.randn(n // world), torch.empty(n)

        def ag():
            all_gather(full, shard)

        def rs():
            reduce_scatter(shard, full)

        def a2a():
            dist.all_to_all_single(recv, full)

        def p2p():
            if rank == 0:
                dist.send(full, peer)
                dist.recv(full, peer)
            else:
                dist.recv(full, (rank - 1) % world)
                dist.send(full, (rank - 1) % world)

        for kind, fn in (("all_gather", ag), ("reduce_scatter", rs), ("all_to_all", a2a), ("p2p", p2p)):
            work, t = _loaded_extra(fn, COLLECTIVE_WORK, 8 if nbytes > 2 ** 20 else 20)
            out.append((kind, nbytes, work, t / 2 if kind == "p2p" else t))  # p2p: a round trip is two messages
    result = {"skew": skew, "collectives": out}
    if compute is not None:
        dist.barrier()
        if rank == 0:
            from ..parallel.launch import join_fake_group

            # the link this rank fits alone is not used: the fake group's collectives cost nothing
            prof, _ = _cpu_profile({**compute, "skew_samples": skew, "loaded_collectives": out}, world)
            join_fake_group(SHARDED_OVERHEAD_RANKS)
            result["op_overhead_sharded"] = op_overhead(prof, SHARDED_OVERHEAD_RANKS)
    return result


def _reduce_repeats(repeats: list, reduce, where: str = "samples"):
    """Repeats of one measurement (over ranks or rounds), of the same structure, figure by figure: floats by
    ``reduce``; labels (kinds, sizes in bytes) must agree. Raises ValueError naming the first place where the
    repeats measured different things."""
    first = repeats[0]
    if isinstance(first, float):
        return reduce(repeats)
    if isinstance(first, dict):
        if any(not isinstance(r, dict) or r.keys() != first.keys() for r in repeats):
            raise ValueError(f"{where}: the repeats measured different figures")
        return {k: _reduce_repeats([r[k] for r in repeats], reduce, f"{where}.{k}") for k in first}
    if isinstance(first, (list, tuple)):
        if any(not isinstance(r, (list, tuple)) or len(r) != len(first) for r in repeats):
            raise ValueError(f"{where}: the repeats measured different numbers of samples")
        return type(first)(_reduce_repeats(list(v), reduce, f"{where}[{i}]") for i, v in enumerate(zip(*repeats)))
    if any(r != first for r in repeats):
        raise ValueError(f"{where}: the repeats measured at different labels ({first!r}, ...)")
    return first


def _relative_lstsq(columns: list[list[float]], y: list[float], floor: float = 0.0) -> list[float]:
    """Least squares of y against the columns, each row weighted by 1 / max(|y|, floor): relative errors, so
    small samples matter as much as large ones."""
    a = torch.tensor(columns, dtype=torch.float64).T
    t = torch.tensor(y, dtype=torch.float64)
    w = 1 / t.abs().clamp_min(floor)
    return torch.linalg.lstsq(a * w[:, None], (t * w)[:, None]).solution.flatten().tolist()


def fit_skew(samples: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares of added = c + skew x compute over (compute, added) samples, relative error weighted:
    (skew, c). Skew is the fraction of the compute between collectives that each waits for the slowest rank."""
    c, skew = _relative_lstsq([[1.0] * len(samples), [w for w, _ in samples]], [t for _, t in samples], 1e-6)
    return max(0.0, skew), c


def collective_samples(loaded: list[tuple[str, int, float, float]], skew: float) -> list[tuple[str, int, float]]:
    """(kind, bytes, seconds) of each loaded collective of :func:`collective_rank` (kind, bytes, compute before
    it, seconds it added) less the rank skew its preceding compute brings."""
    return [(kind, nbytes, max(t - (skew * work if kind != "p2p" else skew * work / 2), 1e-7))
            for kind, nbytes, work, t in loaded]


def _fit_alpha_beta(rows: list[tuple[float, float, float]]) -> tuple[float, float]:
    """Non-negative (alpha, 1/beta) of t = steps x alpha + moved bytes / beta over (steps, moved, t) rows, by
    least squares of the relative error: small messages matter as much as large ones."""

    def solve(cols: tuple[int, ...]) -> list[float]:
        return _relative_lstsq([[r[c] for r in rows] for c in cols], [r[2] for r in rows])

    alpha, inv_beta = solve((0, 1))
    if alpha < 0:  # noise made the intercept negative: the bandwidth term alone
        alpha, inv_beta = 0.0, solve((1,))[0]
    elif inv_beta < 0:
        alpha, inv_beta = solve((0,))[0], 0.0
    return max(alpha, 0.0), max(inv_beta, 1e-13)


def _squared_relative_errors(rows: list[tuple[float, float, float]], alpha: float, inv_beta: float) -> list[float]:
    return [((s * alpha + m * inv_beta) / t - 1) ** 2 for s, m, t in rows]


def fit_link(samples: list[tuple[str, int, float]], world: int) -> tuple[Link, dict[str, float]]:
    """Alpha and beta of each collective kind on its own, and pooled over all kinds (what a kind not measured
    costs), by least squares (t = steps x alpha + moved bytes / beta); and the relative RMS residual of each
    fit over every sample ("pooled", "per_kind")."""
    if not samples or any(not t > 0 or nbytes <= 0 for _, nbytes, t in samples):
        raise ValueError("fit_link needs (kind, bytes > 0, seconds > 0) samples; got none, or a zero or negative one")
    rows: dict[str, list[tuple[float, float, float]]] = {}
    for kind, nbytes, t in samples:
        steps, moved = (1, nbytes) if kind == "p2p" else (world - 1, (world - 1) / world * nbytes)
        rows.setdefault(kind, []).append((steps, moved, t))
    every = [r for kind_rows in rows.values() for r in kind_rows]
    alpha, inv_beta = _fit_alpha_beta(every)
    kinds = {kind: _fit_alpha_beta(kind_rows) for kind, kind_rows in rows.items() if len(kind_rows) >= 2}
    own = [e for kind, (a, ib) in kinds.items() for e in _squared_relative_errors(rows[kind], a, ib)]
    own += [e for kind, kind_rows in rows.items() if kind not in kinds
            for e in _squared_relative_errors(kind_rows, alpha, inv_beta)]
    residual = {"pooled": statistics.fmean(_squared_relative_errors(every, alpha, inv_beta)) ** 0.5,
                "per_kind": statistics.fmean(own) ** 0.5}
    link = Link(bandwidth=1 / inv_beta, latency=alpha, kinds={k: (1 / ib, a) for k, (a, ib) in kinds.items()})
    return link, residual


def _curve(samples: list[tuple[float, float]], peak: float) -> EfficiencyCurve:
    return EfficiencyCurve(tuple(f for f, _ in samples), tuple(min(1.5, r / peak) for _, r in samples))


CALIBRATION_ROUNDS = 3
"""Independent rounds of the CPU calibration; the profile takes each figure's median over them."""


ROUND_FORMAT = 2
"""Version of the figures a round measures (2: with the elementwise rate); checkpoints of another are not resumed."""


def _measure_round(world: int, timeout_s: float) -> dict:
    """One round of every CPU microbenchmark."""
    from ..parallel.launch import run_ranks

    m = {"matmul": matmul_sweep(), "attention": attention_sweep(), "attention_backward": attention_backward_sweep(),
         "memory_bandwidth": memory_bandwidth(), "elementwise_bandwidth": elementwise_bandwidth()}
    ranks = run_ranks(collective_rank, world, m, timeout_s=timeout_s)
    sharded = ranks[0].pop("op_overhead_sharded")
    loaded = _reduce_repeats(ranks, statistics.fmean)
    m.update(skew_samples=loaded["skew"], loaded_collectives=loaded["collectives"])
    prof, _ = _cpu_profile(m, world)
    m.update(op_overhead=op_overhead(prof), op_overhead_sharded=sharded)
    return m


def _cpu_profile(m: dict, world: int, rounds: int = 1, dates: str | None = None) -> tuple[HardwareProfile, dict]:
    """The CPU profile of one round's samples or of their medians over rounds (measured on ``dates``, default
    today), and what was fitted to them (rank skew, the collectives less the skew, the link fit's in-sample
    residuals)."""
    skew, _ = fit_skew(m["skew_samples"])
    coll = collective_samples(m["loaded_collectives"], skew)
    link, residual = fit_link(coll, world)
    peak = max(r for _, r in m["matmul"] + m["attention"] + m["attention_backward"])
    where = f"measured by s2vbench calibrate on this machine, {dates or _dt.date.today().isoformat()}"
    rounds = f"from the samples' medians over {rounds} rounds" if rounds > 1 else "one round"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    work = [w for w, _ in m["skew_samples"]]
    prof = HardwareProfile(
        name="cpu-gloo", peak_flops=peak, memory_bandwidth=m["memory_bandwidth"], memory_capacity=float(ram),
        elementwise_bandwidth=m["elementwise_bandwidth"],
        intra_node=link, inter_node=link, host_link=m["memory_bandwidth"], gpus_per_node=os.cpu_count() or 1,
        matmul=_curve(m["matmul"], peak), attention=_curve(m["attention"], peak),
        attention_backward=_curve(m["attention_backward"], peak), comm_overlaps_compute=False,
        op_overhead=m.get("op_overhead", 0.0), op_overhead_sharded=m.get("op_overhead_sharded", 0.0),
        rank_skew=skew,
        sources={"peak_flops": f"{where}: the fastest float32 rate of the matmul and attention sweeps, one thread, "
                               f"{rounds}",
                 "memory_bandwidth": f"{where}: c = a + b over 64 MiB, {rounds}", "memory_capacity": "os.sysconf",
                 "elementwise_bandwidth": f"{where}: {_ELEMENTWISE_CHAIN % ELEMENTWISE_SHAPE['cpu']}, one thread, "
                                          f"{rounds}",
                 "intra_node": f"{where}: gloo, {world} ranks, least squares per collective kind over its "
                               f"{len(COLLECTIVE_SIZES)} sizes, each after compute, less the rank skew, {rounds} "
                               f"(in-sample relative RMS residual {residual['per_kind']:.0%}; one pair pooled "
                               f"over kinds {residual['pooled']:.0%})",
                 "rank_skew": f"{where}: gloo, {world} ranks, small all-reduces after {work[0] * 1e3:.0f} to "
                              f"{work[-1] * 1e3:.0f} ms of compute, least squares of the time each adds against "
                              f"the compute, {rounds}",
                 "inter_node": "the same as intra_node (one host)", "host_link": "memory bandwidth (no device)",
                 "gpus_per_node": "os.cpu_count()", "matmul": f"{where}, {rounds}",
                 "attention": f"{where}: torch SDPA, {rounds}",
                 "attention_backward": f"{where}: torch SDPA backward, {rounds}",
                 "op_overhead": f"{where}: a training step at toy widths (32 wide, 2 heads) less its modelled "
                                f"compute, per dispatched op, one thread, {rounds}",
                 "op_overhead_sharded": f"{where}: the same step under FSDP on 2 ranks (fake process group), "
                                        f"{rounds}",
                 "comm_overlaps_compute": "by construction, false: gloo's threads share the cores the ranks' "
                                          "compute threads fill"})
    return prof, {"rank_skew": skew, "collectives": coll, "link_residual": residual}


def _round_figures(prof: HardwareProfile) -> dict[str, float]:
    """The figures of one round whose spread over rounds the report quotes."""
    link = prof.intra_node
    return {"peak_flops": prof.peak_flops, "memory_bandwidth": prof.memory_bandwidth,
            "elementwise_bandwidth": prof.elementwise_rate,
            "op_overhead": prof.op_overhead, "op_overhead_sharded": prof.op_overhead_sharded,
            "rank_skew": prof.rank_skew, "latency": link.latency, "bandwidth": link.bandwidth,
            **{f"latency_{k}": lat for k, (_, lat) in link.kinds.items()},
            **{f"bandwidth_{k}": bw for k, (bw, _) in link.kinds.items()}}


class CalibrationError(RuntimeError):
    """A calibration that cannot run or resume as asked, with the fix."""


def _checkpoint_key(world: int) -> dict:
    """What a checkpoint's rounds must share with this calibration to be resumed: the machine and the sweeps."""
    import platform

    return {"world": world, "host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "round_format": ROUND_FORMAT,
            "collective_sizes": list(COLLECTIVE_SIZES), "skew_work": list(SKEW_WORK),
            "collective_work": COLLECTIVE_WORK}


def _finished_rounds(checkpoint, world: int) -> tuple[list[dict], list[str]]:
    """(rounds, the UTC time each was measured) that an interrupted calibration finished into ``checkpoint``
    (none if it does not exist)."""
    import json
    from pathlib import Path

    if checkpoint is None or not Path(checkpoint).is_file():
        return [], []
    # A checkpoint that cannot be read is refused, never ignored: it may hold minutes of finished rounds, and
    # measuring afresh would overwrite them. The user decides whether to delete it.
    try:
        doc = json.loads(Path(checkpoint).read_text())
    except (OSError, ValueError) as e:  # ValueError: bad JSON or not UTF-8
        raise CalibrationError(f"calibration checkpoint {checkpoint} cannot be read ({e}); if it is corrupt, "
                               f"delete it to calibrate afresh (its rounds are lost), or pass another output"
                               ) from None
    try:
        rounds, times, key = doc["rounds"], doc["measured_utc"], doc["key"]
        well_formed = (isinstance(rounds, list) and isinstance(times, list) and len(times) == len(rounds)
                       and all(isinstance(r, dict) for r in rounds) and all(isinstance(t, str) for t in times))
    except (KeyError, TypeError):
        well_formed = False
    if not well_formed:
        raise CalibrationError(f"calibration checkpoint {checkpoint} is not one s2vbench wrote (it needs a key and "
                               f"equally long lists rounds and measured_utc); delete it to calibrate afresh, or "
                               f"pass another output")
    if key != _checkpoint_key(world):
        raise CalibrationError(f"{checkpoint} holds no calibration rounds of {world} ranks with this machine, "
                               f"torch and sweeps; delete it to calibrate afresh, or pass another output")
    return rounds, times


def calibrate_cpu(world: int = 2, rounds: int = CALIBRATION_ROUNDS, timeout_s: float = 300.0,
                  checkpoint=None, progress: bool = False,
                  deadline: float | None = None) -> tuple[HardwareProfile, dict]:
    """A profile of this CPU as the harness uses it (one thread per rank, gloo between ranks): ``rounds``
    independent rounds of every microbenchmark, each figure the median over them (a shared CPU drifts by tens
    of percent between rounds minutes apart; the spread is in ``raw["rounds"]``). Fitted figures (rank skew,
    alpha and beta) are fitted to the samples' medians. With a ``checkpoint`` file, each finished round is
    written to it at once, and a calibration interrupted before its last round resumes from the rounds there
    (on the same machine, torch and sweeps). With a ``deadline`` (``time.monotonic()``), a round after the
    first starts only if it would end by then, at the length of the longest round measured so far in this
    call; ``raw["rounds_cut"]`` then says how many of ``rounds`` ran and why."""
    from .results import atomic_write_json, is_int

    if not is_int(rounds) or rounds < 1:
        raise ValueError(f"calibration rounds must be a positive integer, not {rounds!r}")
    measured, times = _finished_rounds(checkpoint, world)
    measured, times = measured[:rounds], times[:rounds]
    if measured and progress:
        print(f"calibration: resuming {len(measured)} finished round(s) from {checkpoint}", flush=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    longest = 0.0  # the longest round measured in this call: what the next one is expected to take
    cut = None
    try:
        while len(measured) < rounds:
            if measured and deadline is not None and time.monotonic() + longest > deadline:
                cut = f"{len(measured)} of the {rounds} rounds asked for: one more " + (
                    "would have started after the run's time budget" if not longest else
                    f"(at the {longest:.0f} s the longest so far took) would have ended after the run's time budget")
                if progress:
                    print(f"calibration: stopping after {cut}", flush=True)
                break
            if progress:
                print(f"calibration round {len(measured) + 1}/{rounds}", flush=True)
            start = time.monotonic()
            measured.append(_measure_round(world, timeout_s))
            longest = max(longest, time.monotonic() - start)
            times.append(_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
            if checkpoint is not None:
                atomic_write_json(checkpoint, {"key": _checkpoint_key(world), "measured_utc": times,
                                               "rounds": measured})
    finally:
        torch.set_num_threads(threads)
    try:
        median = _reduce_repeats(measured, statistics.median, "rounds")
    except ValueError as e:
        raise CalibrationError(f"the calibration rounds cannot be combined ({e}); delete {checkpoint} to "
                               f"calibrate afresh") from None
    days = sorted({t[:10] for t in times})
    prof, fitted = _cpu_profile(median, world, len(measured),
                                days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}")
    raw = {**median, **fitted, "measured_utc": times, "rounds_cut": cut,
           "rounds": [_round_figures(_cpu_profile(m, world)[0]) for m in measured]}
    return prof, raw


# ---- validation ---------------------------------------------------------------------------------------


def _record_setup(record: Record):
    """(model config, layout, strategy) of a measured record."""
    from ..model.config import ClipShape, get_preset
    from ..model.sequence import clip_layout

    c = record.config
    cfg = get_preset(c["preset"]).model
    deg = c["degrees"]
    st = Strategy(deg["dp_shard"], deg["ulysses"], deg["ring"], bool(c["ac"]), c["dtype"], int(c.get("grad_accum", 1)),
                  dp_replicate=int(c.get("dp_replicate", 1)))
    return cfg, clip_layout(cfg, ClipShape(**c["clip"])), st


def predict_record(record: Record, hw: HardwareProfile) -> Prediction:
    """The model's step time for a measured iteration record."""
    cfg, lay, st = _record_setup(record)
    return predict_training(cfg, lay, st, hw, int(record.config["global_batch"]))


def predict_inference_record(record: Record, hw: HardwareProfile) -> Prediction:
    """The model's time for one of a record's measured CFG denoising steps: 2 no-grad forwards of the rank's
    batch, without the encoders (the harness times the DiT alone)."""
    cfg, lay, st = _record_setup(record)
    return predict_inference(cfg, lay, Strategy(1, st.ulysses, st.ring, False, st.dtype), hw, steps=1,
                             encoders=False, batch=int(record.config["global_batch"]))


def _quiet(noise: float | None) -> bool:
    """Whether a point whose steps have this IQR/median counts in the validation."""
    return noise is not None and noise < NOISE_LIMIT


def step_noise(record: Record, metric: str = "step_time") -> float | None:
    """IQR / median of the record's timed steps of ``metric`` (None with fewer than 3)."""
    steps = step_times(record, metric)
    if len(steps) < 3:
        return None
    q = statistics.quantiles(steps, n=4, method="inclusive")
    return (q[2] - q[0]) / statistics.median(steps)


@dataclass
class ValidationRow:
    """One end-to-end point, predicted and measured."""

    name: str
    measured: float
    """Median step time, s."""
    model: float
    """The model's time before fitting (elementwise factor 1), s."""
    elementwise: float = 0.0
    """Its elementwise-traffic part, s."""
    loo: float | None = None
    """Prediction with the elementwise factor fitted on the other counted points, s."""
    noise: float | None = None
    """IQR / median of the measured steps."""
    counted: bool = False
    """Whether the point is quiet enough to count."""
    compute_measured: float | None = None
    """Measured compute-only time (collectives as no-ops), s."""
    comm_model: float = 0.0
    """The model's exposed communication, s (its step time minus this is its compute-only time)."""
    act_measured: float | None = None
    """Saved activations, GiB (the memory check)."""
    act_predicted: float | None = None
    """The formula's saved activations, GiB."""
    peak_measured: float | None = None
    """Peak tensor storage of a step (``measure.TrackedMemory``), GiB."""
    peak_predicted: float | None = None
    """The model's peak memory per rank, GiB."""

    @property
    def error(self) -> float | None:
        return None if self.loo is None else self.loo / self.measured - 1


def _fit_elementwise_factor(rows: list[ValidationRow]) -> float:
    """Least squares, non-negative, of compute - (model compute - elementwise) = k * elementwise: k.

    Compute-only times (collectives as no-ops) where measured, so that communication the model misses is not
    charged to the elementwise term and then to every other point."""
    # without a compute-only time, the step against the model's step (its communication included)
    y = [r.measured - (r.model - r.elementwise) if r.compute_measured is None else
         r.compute_measured - (r.model - r.comm_model - r.elementwise) for r in rows]
    e = [r.elementwise for r in rows]
    if not rows or sum(v * v for v in e) == 0:
        return 1.0
    return max(0.0, sum(yi * ei for yi, ei in zip(y, e)) / sum(ei * ei for ei in e))


def validate(records: list[Record], hw: HardwareProfile) -> tuple[list[ValidationRow], dict]:
    """Leave-one-out validation of step time, and of saved activations, on measured iteration records; of the
    time of a CFG denoising step too, where a one-rank record timed inference."""
    rows = []
    base = HardwareProfile(**{**hw.__dict__, "elementwise_factor": 1.0})
    for r in records:
        if r.kind != "iteration" or "oversubscribed" in r.tags or "oom" in r.tags or "failed" in r.tags:
            continue
        if not step_times(r):
            continue
        m = r.metric("step_time")
        try:
            pred = predict_record(r, base)
        except (PlanError, KeyError, ValueError):
            continue
        noise = step_noise(r)
        row = ValidationRow(r.name, m.value, pred.time, pred.elementwise, noise=noise,
                            counted=_quiet(noise), comm_model=pred.exposed_comm)
        try:
            row.compute_measured = r.metric("compute_time").value
        except KeyError:
            if r.config["world"] == 1:
                row.compute_measured = m.value  # one rank: no collectives, the step is compute-only
        try:
            row.act_measured = r.metric("saved_activations").value
            row.act_predicted = pred.saved_activations / 2 ** 30
        except KeyError:
            pass
        try:
            row.peak_measured = r.metric("tracked_peak_memory").value
            row.peak_predicted = pred.memory_total / 2 ** 30
        except KeyError:  # results from before the tracker
            pass
        rows.append(row)
        if step_times(r, "inference_step_time") and r.config["world"] == 1:
            # one rank only: the harness's multi-rank inference keeps FSDP's sharded weights, the model's inference
            # replicated ones
            inf = predict_inference_record(r, base)
            measured = r.metric("inference_step_time").value
            noise = step_noise(r, "inference_step_time")
            rows.append(ValidationRow(f"{r.name} (CFG step)", measured, inf.time, inf.elementwise, noise=noise,
                                      counted=_quiet(noise),
                                      compute_measured=measured))
    counted = [row for row in rows if row.counted]
    for row in rows:
        others = [o for o in counted if o is not row]
        if others:
            row.loo = row.model + (_fit_elementwise_factor(others) - 1) * row.elementwise
    errs = [abs(row.error) for row in counted if row.error is not None]
    bare = [abs(row.model / row.measured - 1) for row in counted]  # the microbenchmarks alone, no fitted factor
    mem = [abs(row.act_predicted / row.act_measured - 1) for row in rows
           if row.act_measured and row.act_predicted is not None]
    peak = [abs(row.peak_predicted / row.peak_measured - 1) for row in rows
            if row.peak_measured and row.peak_predicted is not None]
    summary = {"points": len(rows), "counted": len(counted),
               "time_mean_abs_error": statistics.mean(errs) if errs else None,
               "time_max_abs_error": max(errs) if errs else None,
               "unfitted_mean_abs_error": statistics.mean(bare) if bare else None,
               "unfitted_max_abs_error": max(bare) if bare else None,
               "memory_mean_abs_error": statistics.mean(mem) if mem else None,
               "memory_max_abs_error": max(mem) if mem else None,
               "peak_memory_mean_abs_error": statistics.mean(peak) if peak else None,
               "peak_memory_max_abs_error": max(peak) if peak else None,
               "elementwise_factor": _fit_elementwise_factor(counted)}
    return rows, summary


def _link_table(link: Link, samples: list[tuple[str, int, float]]) -> str:
    from tabulate import tabulate

    sizes = sorted({n for _, n, _ in samples})
    table = []
    for kind, (bandwidth, latency) in sorted(link.kinds.items()):
        by_size = {n: t for k, n, t in samples if k == kind}
        table.append([kind, f"{latency * 1e6:.0f}", f"{bandwidth / 1e9:.2f}",
                      *(f"{by_size[n] * 1e3:.2f}" if n in by_size else "" for n in sizes)])
    return tabulate(table, ["collective", "alpha us", "beta GB/s",
                            *(f"{n / 2 ** 10:.0f} KiB ms" for n in sizes)], tablefmt="github")


def _spread_lines(rounds: list[dict[str, float]]) -> list[str]:
    """The figures' spread over calibration rounds, as report lines (none for a single round)."""
    from tabulate import tabulate

    if len(rounds) < 2:
        return []
    units = {"peak_flops": (1e-9, "GFLOP/s"), "memory_bandwidth": (1e-9, "GB/s"),
             "elementwise_bandwidth": (1e-9, "GB/s"), "bandwidth": (1e-9, "GB/s"),
             "rank_skew": (100, "%"), **{f"bandwidth_{k}": (1e-9, "GB/s") for k in COLLECTIVE_KINDS}}
    table = []
    for key in rounds[0]:
        values = [r[key] for r in rounds if key in r]
        scale, unit = units.get(key, (1e6, "us"))
        mid = statistics.median(values)
        table.append([key, unit, f"{mid * scale:.2f}", f"{min(values) * scale:.2f}", f"{max(values) * scale:.2f}",
                      f"{(max(values) - min(values)) / mid:.0%}" if mid else "n/a"])
    return [(f"The calibration ran {len(rounds)} independent rounds. Measured figures are their medians; fitted "
             "ones (rank skew, alpha, beta) are fitted to the samples' medians, so they need not equal the median "
             "of the rounds' own fits below. The spread of each round's own figure:"), "",
            tabulate(table, ["figure", "unit", "median of the rounds' own", "min", "max", "(max - min) / median"],
                     tablefmt="github"), ""]


def calibration_markdown(hw: HardwareProfile, raw: dict, rows: list[ValidationRow], summary: dict) -> str:
    from tabulate import tabulate

    link = hw.intra_node
    lines = ["## Performance model: calibration and validation", "",
             ("Calibrated on microbenchmarks only (one thread per rank, as the harness runs), then checked against "
             "the end-to-end steps above and in `validation.json`. Times are medians; warm-up excluded."), "",
             tabulate([[f"{f:.2e}", f"{r / 1e9:.1f}", f"{r / hw.peak_flops:.2f}"] for f, r in raw["matmul"]],
                      ["matmul FLOPs/call", "GFLOP/s", "of peak"], tablefmt="github"), "",
             tabulate([[f"{f:.2e}", f"{r / 1e9:.1f}", f"{r / hw.peak_flops:.2f}", f"{rb / 1e9:.1f}",
                        f"{rb / hw.peak_flops:.2f}"] for (f, r), (_, rb) in zip(raw["attention"],
                                                                               raw["attention_backward"])],
                      ["SDPA forward FLOPs/call", "forward GFLOP/s", "of peak", "backward GFLOP/s", "of peak"],
                      tablefmt="github"), "",
             (f"Attention backward is counted at {ATTENTION_BACKWARD_FLOPS}x the forward FLOPs (the scores are "
              "recomputed, then four more matmuls), matmul backward at 2x."), "",
             (f"Memory bandwidth {hw.memory_bandwidth / 1e9:.1f} GB/s (c = a + b); eager elementwise ops "
              f"{hw.elementwise_rate / 1e9:.1f} GB/s (a DiT block's norms, modulation, RoPE, GELU and residual, "
              f"forward and backward, fresh outputs, bytes counted as the model's are). Host overhead per dispatched "
              f"op (a toy-width training step less its modelled compute): {hw.op_overhead * 1e6:.1f} us alone, "
              f"{hw.op_overhead_sharded * 1e6:.1f} us under FSDP. gloo on 2 ranks that compute between "
              f"collectives: rank skew {hw.rank_skew:.1%} of the compute between two collectives (small "
              f"all-reduces after {', '.join(f'{w * 1e3:.0f}' for w, _ in raw['skew_samples'])} ms of compute "
              f"added {', '.join(f'{t * 1e3:.1f}' for _, t in raw['skew_samples'])} ms). Collectives, each after "
              f"compute, the skew taken out, alpha and beta by least squares per kind (in-sample relative RMS residual "
              f"{raw['link_residual']['per_kind']:.0%}; one pair pooled over kinds: alpha "
              f"{link.latency * 1e6:.0f} us, beta {link.bandwidth / 1e9:.2f} GB/s, residual "
              f"{raw['link_residual']['pooled']:.0%}):"), "",
             _link_table(link, raw["collectives"]), "", *_spread_lines(raw.get("rounds", [])),
             *([f"The calibration stopped at {raw['rounds_cut']} (`--budget-min` sets it, "
                f"`--calibration-rounds` the rounds asked for).", ""] if raw.get("rounds_cut") else []),
             ("Validation (leave-one-out: each point's elementwise factor is fitted on the other counted points' "
              "compute-only times; "
             f"a point counts when its step-time IQR/median < {NOISE_LIMIT:.0%}):"), ""]
    table = [[r.name, f"{r.measured:.3f}", f"{r.model:.3f}", "" if r.loo is None else f"{r.loo:.3f}",
              "" if r.error is None else f"{r.error:+.1%}",
              "" if r.compute_measured is None else f"{r.compute_measured:.3f}",
              "" if r.loo is None else f"{r.loo - r.comm_model:.3f}",
              "n/a" if r.noise is None else f"{r.noise:.1%}",
              "yes" if r.counted else "no (noisy)",
              "" if r.act_measured is None else f"{r.act_measured:.3f}",
              "" if r.act_predicted is None else f"{r.act_predicted:.3f}",
              "" if r.peak_measured is None else f"{r.peak_measured:.3f}",
              "" if r.peak_predicted is None else f"{r.peak_predicted:.3f}"] for r in rows]
    lines.append(tabulate(table, ["point", "measured s", "model s", "LOO predicted s", "error",
                                  "compute-only measured s", "compute-only predicted s", "IQR/median",
                                  "counted", "saved act GiB", "predicted GiB", "peak GiB (tracked)",
                                  "predicted peak GiB"], tablefmt="github"))

    def pct(v):
        return "n/a" if v is None else f"{v:.1%}"

    ok = summary["time_max_abs_error"] is not None and summary["time_max_abs_error"] <= 0.15
    lines += ["", (f"Time: mean |error| {pct(summary['time_mean_abs_error'])}, max |error| "
                  f"{pct(summary['time_max_abs_error'])} over {summary['counted']} counted of {summary['points']} "
                  f"points (target: max <= 15%: {'met' if ok else 'NOT met'}). Saved activations: mean |error| "
                  f"{pct(summary['memory_mean_abs_error'])}, max {pct(summary['memory_max_abs_error'])}; peak "
                  f"memory per rank (tensor storage tracked op by op in the counted step): mean |error| "
                  f"{pct(summary.get('peak_memory_mean_abs_error'))}, max "
                  f"{pct(summary.get('peak_memory_max_abs_error'))}. "
                  f"Elementwise factor fitted on all counted points: {summary['elementwise_factor']:.2f} (it also "
                  f"carries whatever else of the steps' compute the microbenchmarks miss); with factor 1, the "
                  f"microbenchmarks alone (\"model s\"), mean |error| {pct(summary['unfitted_mean_abs_error'])}, "
                  f"max {pct(summary['unfitted_max_abs_error'])}.")]
    return "\n".join(lines) + "\n"


__all__ = ["CALIBRATION_ROUNDS", "NOISE_LIMIT", "CalibrationError", "ValidationRow", "attention_backward_sweep",
           "calibrate_cpu", "calibration_markdown", "collective_rank", "fit_link", "predict_record", "step_noise",
           "validate"]


def validation_points() -> list:
    """End-to-end points at widths, lengths and world sizes the main job does not run (tiny is 1/4 the width
    of small; the small clip at half its length), timed like the main job's points. A tiny step takes under
    0.3 s: 20 of them make its IQR/median a measure of its noise, not of three draws. The one-rank points also
    time CFG denoising steps, to validate the inference model."""
    from .points import Point

    return [Point("tiny", 1, "single", steps=20, inference=True), Point("tiny", 2, "ulysses", steps=20),
            Point("small", 1, "single", global_batch=1, frames=16, steps=5, inference=True)]


def calibrate_and_validate(out, results_paths: list, progress: bool = True, rounds: int = CALIBRATION_ROUNDS,
                           deadline: float | None = None) -> str:
    """Run the validation points and the CPU calibration (up to ``rounds`` rounds, each kept in
    ``calibration_rounds.json`` as it finishes; those after the first only while they end by ``deadline``);
    write ``validation.json`` and ``calibration.json`` into ``out``, and the report section, which it returns,
    into ``out``'s ``report.CALIBRATION_SECTION``, where every report written into ``out`` includes it. A re-run
    resumes both."""
    from pathlib import Path

    from .report import CALIBRATION_SECTION
    from .results import atomic_write_json, atomic_write_text, read_results
    from .sweep import run_sweep

    out = Path(out)
    val = run_sweep(validation_points(), out / "validation.json", progress=progress)
    prof, raw = calibrate_cpu(rounds=rounds, checkpoint=out / "calibration_rounds.json", progress=progress,
                              deadline=deadline)
    records = [r for p in [*results_paths, val.path] for r in read_results(p)]
    rows, summary = validate(records, prof)
    prof = HardwareProfile(**{**prof.__dict__, "elementwise_factor": summary["elementwise_factor"]})
    atomic_write_json(out / "calibration.json", {"profile": prof.to_dict(), "raw": raw, "summary": summary,
                                                 "rows": [r.__dict__ for r in rows]})
    section = calibration_markdown(prof, raw, rows, summary)
    atomic_write_text(out / CALIBRATION_SECTION, section)
    return section


def calibrate_gpu(base: str = "h100-sxm") -> tuple[HardwareProfile, dict]:
    """Measure this GPU's matmul and attention curves and memory bandwidth into a copy of the datasheet
    profile ``base``; the peak stays the datasheet's (efficiency is relative to it). Links need more than one
    GPU and stay as the base profile has them, marked so."""
    from .profiles import load_profile

    device = "cuda"
    hw = load_profile(base)
    mm, at, bw = matmul_sweep(device), attention_sweep(device), memory_bandwidth(device)
    at_bwd, ew = attention_backward_sweep(device), elementwise_bandwidth(device)
    today = _dt.date.today().isoformat()
    where = f"measured by s2vbench calibrate on {torch.cuda.get_device_name()}, {today}"
    sources = {**hw.sources, "matmul": f"{where}: bf16 torch matmul", "attention": f"{where}: bf16 torch SDPA",
               "attention_backward": f"{where}: bf16 torch SDPA backward",
               "memory_bandwidth": f"{where}: c = a + b over 1 GiB",
               "elementwise_bandwidth": f"{where}: {_ELEMENTWISE_CHAIN % ELEMENTWISE_SHAPE['cuda']}"}
    prof = HardwareProfile(**{**hw.__dict__, "name": f"{base}-calibrated", "memory_bandwidth": bw,
                              "elementwise_bandwidth": ew,
                              "matmul": _curve(mm, hw.peak_flops), "attention": _curve(at, hw.peak_flops),
                              "attention_backward": _curve(at_bwd, hw.peak_flops), "sources": sources})
    return prof, {"matmul": mm, "attention": at, "attention_backward": at_bwd, "memory_bandwidth": bw,
                  "elementwise_bandwidth": ew}


def add_arguments(p) -> None:
    from .profiles import shipped_profiles

    p.add_argument("--out", type=path_arg, required=True,
                   help="profile JSON to write, PROFILE.json (beside it: PROFILE.raw.json, every sample behind the "
                        "fit, and, while a CPU calibration runs, PROFILE.rounds.json, its finished rounds)")
    p.add_argument("--base", default="h100-sxm",
                   help=f"on GPU: the datasheet profile to calibrate, {', '.join(shipped_profiles())} or a profile "
                        f"JSON (default h100-sxm; checked on every device)")
    from .cli import positive_int

    p.add_argument("--rounds", type=positive_int, default=CALIBRATION_ROUNDS,
                   help=f"on CPU: independent calibration rounds, each figure their median (default "
                        f"{CALIBRATION_ROUNDS}); an interrupted calibration's finished rounds are kept in "
                        f"PROFILE.rounds.json and resumed")


SIDE_FILES = (".rounds.json", ".raw.json")
"""What ``calibrate --out PROFILE.json`` writes beside the profile, as PROFILE.rounds.json and PROFILE.raw.json."""


def _check_out_name(out) -> None:
    """Refuse an ``--out`` whose side files another output shares. They are named from the stem, so a
    ``c.toml`` would write the ``c.raw.json`` and ``c.rounds.json`` of ``c.json`` (and hold JSON under another
    suffix; without one, ``--hw`` would take the name for a shipped profile's); and ``c.raw.json`` is itself the
    side file of ``c.json``."""
    if out.suffix.lower() != ".json":
        raise ValueError(f"--out {out}: the profile is JSON, and its side files take their names from the name "
                         f"before .json ({out.stem}{SIDE_FILES[1]}, {out.stem}{SIDE_FILES[0]}); pass a name ending "
                         f"in .json, e.g. {out.with_suffix('.json')}")
    side = next((s for s in SIDE_FILES if out.name.lower().endswith(s)), None)
    if side is not None:
        owner = out.with_name(out.name[:-len(side)] + ".json")
        raise ValueError(f"--out {out}: that is the name of a side file of --out {owner}, which would overwrite "
                         f"it; choose a name not ending in {' or '.join(SIDE_FILES)}")


def run(args) -> int:
    from .profiles import ProfileError, load_profile
    from .results import atomic_write_json, check_output_file

    # The inputs and outputs are checked before the minutes of measuring, which would otherwise end in a
    # traceback; --base on every device, although only a GPU uses it, so that a typo shows before a GPU lease.
    try:
        load_profile(args.base)
    except ProfileError as e:
        raise ValueError(f"--base {args.base}: {e}") from None
    if not args.out.is_dir():  # a folder gets check_output_file's message, which suggests a file in it
        _check_out_name(args.out)
    check_output_file(args.out, suffixes=SIDE_FILES)
    checkpoint = args.out.with_suffix(".rounds.json")
    if torch.cuda.is_available():
        prof, raw = calibrate_gpu(args.base)
    else:
        prof, raw = calibrate_cpu(rounds=args.rounds, checkpoint=checkpoint, progress=True)
    prof.save(args.out)
    atomic_write_json(args.out.with_suffix(".raw.json"), raw)
    checkpoint.unlink(missing_ok=True)  # finished: the next `calibrate --out` here measures afresh
    print(f"{prof.name}: peak {prof.peak_flops / 1e12:.3f} TFLOP/s, memory {prof.memory_bandwidth / 1e9:.1f} GB/s, "
          f"link {prof.intra_node.bandwidth / 1e9:.2f} GB/s + {prof.intra_node.latency * 1e6:.0f} us -> {args.out}")
    return 0


__all__ += ["add_arguments", "calibrate_and_validate", "calibrate_gpu", "predict_inference_record", "run", "validation_points"]
