"""``s2vbench buckets``: what token-budget resolution bucketing buys, against two baselines, on one model step.

For each manifest: the bucket plan (``s2vbench.data``), one epoch of the DP x CP sampler, and two baselines on
the same clips: one fixed resolution for every clip, and naive per-clip shapes (each clip its own best shape,
batch size 1, clips dealt to data-parallel ranks in shuffled order). Reported per method: token utilisation
(real tokens / (slots x M)), crop loss, aspect error, the predicted cost imbalance across data-parallel ranks
(the gate) and, from real ``train_step``s of the small preset on CPU at every shape that ran, the measured one,
next to the noise floor of timing one shape repeatedly. A predicted-only section repeats the planning at the
14b preset's M. Results go through :class:`~s2vbench.bench.results.ResultsLog` (atomic), then ``report.md``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.bucketing import MAX_BATCH, BucketError, BucketGeometry, BucketPlan, fit_fixed, plan_buckets
from ..data.manifest import ManifestError, read_manifest, shipped_manifests
from ..data.sampler import BucketSampler, SamplerError, dp_cost_imbalance
from ..model.cli import path_arg, seed_arg
from ..model.config import PRESETS, get_preset
from .analytic import clip_step_cost
from .results import Metric, Record, ResultsLog, atomic_save_figure, atomic_write_text

TARGET_UTILISATION = 0.98
TARGET_IMBALANCE = 0.02
MAX_TIMED_NAIVE_SHAPES = 32
"""Naive per-clip shapes are timed only when there are at most this many distinct ones."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .cli import non_negative_int, positive_int

    p.add_argument("--manifest", type=path_arg, action="append", default=None,
                   help="a .jsonl or .parquet manifest (repeatable; default: the shipped synthetic manifests)")
    p.add_argument("--preset", default="small", choices=sorted(PRESETS),
                   help="model preset that is timed (default small)")
    p.add_argument("--max-tokens", type=positive_int, default=3072, help="M: most tokens of one clip (default 3072)")
    p.add_argument("--frames", default="4,16", help="latent frame window MIN,MAX (4F pixel frames; default 4,16)")
    p.add_argument("--max-buckets", type=positive_int, default=16, help="most bucket shapes (default 16)")
    p.add_argument("--base-batch", type=positive_int, default=1,
                   help=f"batch size of the costliest bucket, at most {MAX_BATCH} (default 1)")
    p.add_argument("--dp", type=positive_int, default=4, help="data-parallel degree of the simulated job (default 4)")
    p.add_argument("--cp", type=positive_int, default=2,
                   help="context-parallel degree of the simulated job (default 2)")
    p.add_argument("--fixed", default=None, help="fixed-resolution baseline shape F,H,W (latent frames, pixels); "
                                                 "default: the largest bucket's shape")
    p.add_argument("--on-error", choices=("raise", "skip"), default="skip",
                   help="bad manifest rows: stop with an error, or skip and count them (default skip)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the synthetic manifests and the sampler (default 0)")
    p.add_argument("--steps", type=positive_int, default=3, help="timed train steps per shape (default 3)")
    p.add_argument("--warmup", type=non_negative_int, default=1, help="untimed warm-up steps per shape (default 1)")
    p.add_argument("--repeats", type=positive_int, default=3, help="interleaved timing rounds over all shapes (default 3; the noise floor "
                                                                    "is the spread of round medians)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--no-measure", action="store_true", help="predicted figures only, no train steps")
    p.add_argument("--scale-preset", default="14b", choices=[*sorted(PRESETS), "none"],
                   help="preset of the predicted-only scale check ('none' skips)")
    p.add_argument("--scale-max-tokens", type=positive_int, default=44544,
                   help="its M (default 44,544: the paper's clip)")
    p.add_argument("--scale-frames", default="12,20", help="its latent frame window (default 12,20: 48-80 frames)")
    p.add_argument("--out", type=path_arg, default=None, help="output folder (default runs/buckets-<timestamp>)")


def _pair(text: str, what: str) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise BucketError(f"{what}={text!r}: give two integers MIN,MAX, e.g. 4,16") from None
    return lo, hi


def _geometry(cfg, max_tokens: int, frames: str, cp: int, flags: tuple[str, str]) -> BucketGeometry:
    """The geometry of ``--max-tokens``/``--frames`` (or their ``--scale-`` twins), its errors naming the flags."""
    lo, hi = _pair(frames, flags[1])
    try:
        return BucketGeometry(cfg, max_tokens, lo, hi, cp_degrees=(cp,))
    except BucketError as e:
        raise BucketError(f"{flags[0]} {max_tokens}, {flags[1]} {frames}: {e}") from None


def _fixed_shape(text: str, geom: BucketGeometry) -> tuple[int, int, int]:
    """``--fixed F,H,W``, checked against the geometry before any planning."""
    try:
        f, h, w = (int(x) for x in text.split(","))
    except ValueError:
        raise BucketError(f"--fixed={text!r}: give three integers F,H,W (latent frames, pixel height and width), "
                          f"e.g. 4,256,256") from None
    m = geom.pixel_multiple
    if f < 1 or min(h, w) < m or h % m or w % m:
        raise BucketError(f"--fixed={text!r}: F must be at least 1 latent frame and H, W positive multiples of "
                          f"{m} pixels, e.g. 4,256,256")
    tokens = geom.tokens(f, h, w)
    if tokens > geom.max_tokens:  # a baseline over M would report a token utilisation above 100%
        raise BucketError(f"--fixed={text!r}: {tokens:,} tokens, over --max-tokens {geom.max_tokens:,}; pick a "
                          f"smaller shape or raise --max-tokens")
    return f, h, w


def _usable(read, path, where: str):
    """``read``'s rows, or an error naming the manifest and why none is usable (rather than an empty plan)."""
    if read.rows:
        return read.rows
    why = (f"all {len(read.skipped)} rows were skipped ({read.skipped_by_reason()})" if read.skipped
           else "it holds no rows")
    raise ManifestError(f"manifest {path}: no clip is usable {where}: {why}; fix the rows (--on-error raise "
                        f"stops at the first bad one) or pass another --manifest")


@dataclass
class MethodResult:
    """One method (bucketed, fixed or naive) on one manifest."""

    name: str
    """"bucketed", "fixed" or "naive"."""
    clips: int
    """Clips that got a target."""
    dropped: int
    """Clips left out (too short for a fixed shape, or batches left over by dp)."""
    utilisation: float
    """Real tokens / (slots x M) over the epoch."""
    crop_loss: float
    """Mean crop loss over clips."""
    aspect_error: float
    """Mean aspect error over clips."""
    upscaled: float
    """Fraction of clips upscaled."""
    shapes: int
    """Distinct clip shapes the method trains on."""
    step_costs: list[tuple[float, ...]]
    """Per step, each data-parallel rank's predicted batch cost."""
    step_shapes: list[tuple[tuple[tuple[int, int, int], int], ...]]
    """Per step, each rank's (shape, batch size), to look measured times up."""
    full_batch: dict[tuple[int, int, int], int] = field(default_factory=dict)
    """Full batch size per shape (a partial batch is timed as that batch scaled by its share)."""
    notes: list[str] = field(default_factory=list)
    """Caveats."""


def _bucketed(plan: BucketPlan, dp: int, cp: int, seed: int) -> tuple[MethodResult, dict[int, float]]:
    sampler = BucketSampler.from_plan(plan, dp, cp, seed=seed)
    ep = sampler.epoch_plan(0)
    if not ep.steps:  # nothing to measure: every figure below would divide by zero
        batches = sum(-(-b.clips // b.batch_size) for b in plan.buckets)
        raise BucketError(f"{len(plan.rows)} usable clip(s) make {batches} batch(es), fewer than the dp={dp} "
                          f"data-parallel ranks of one step; use a manifest with more usable clips or a smaller --dp")
    m = plan.geometry.max_tokens
    real: dict[int, int] = {}
    slots: dict[int, int] = {}
    step_shapes = []
    for step in ep.steps:
        row = []
        for batch in step:
            b = plan.buckets[plan.bucket_of[batch[0]]]
            real[b.index] = real.get(b.index, 0) + len(batch) * b.tokens
            slots[b.index] = slots.get(b.index, 0) + b.batch_size
            row.append((b.shape, len(batch)))
        step_shapes.append(tuple(row))
    per = {k: real[k] / (slots[k] * m) for k in real}
    seen = [i for step in ep.steps for batch in step for i in batch]
    res = MethodResult("bucketed", len(seen), len(plan.rows) - len(seen),
                       sum(real.values()) / (sum(slots.values()) * m),
                       float(np.mean([plan.targets[i].crop_loss for i in seen])),
                       float(np.mean([plan.targets[i].aspect_error for i in seen])),
                       float(np.mean([plan.targets[i].upscaled for i in seen])), len(plan.buckets), ep.costs, step_shapes,
                       {b.shape: b.batch_size for b in plan.buckets})
    if ep.dropped:
        res.notes.append(f"{len(ep.dropped)} batch(es) left over by dp={dp} wait for the next epoch")
    return res, per


def _naive(plan: BucketPlan, cost, dp: int, seed: int) -> MethodResult:
    # What training without buckets does: each clip at its own best shape, batch 1, dealt out in shuffled order.
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0, 0x4E41]))
    order = rng.permutation(len(plan.rows))
    usable = len(order) - len(order) % dp
    steps = [order[i:i + dp] for i in range(0, usable, dp)]
    t = plan.naive
    costs = [tuple(cost(t[i].tokens) for i in s) for s in steps]
    shapes = [tuple((t[i].shape, 1) for i in s) for s in steps]
    seen = order[:usable]
    m = plan.geometry.max_tokens
    return MethodResult("naive", usable, len(order) - usable, sum(t[i].tokens for i in seen) / (usable * m),
                        float(np.mean([t[i].crop_loss for i in seen])), float(np.mean([t[i].aspect_error for i in seen])),
                        float(np.mean([t[i].upscaled for i in seen])), len({t[i].shape for i in seen}), costs, shapes)


def _fixed(plan: BucketPlan, shape: tuple[int, int, int], cost, dp: int, seed: int) -> MethodResult:
    geom = plan.geometry
    fits = [fit_fixed(r, geom, shape) for r in plan.rows]
    kept = [t for t in fits if t is not None]
    too_short = len(fits) - len(kept)
    usable = len(kept) - len(kept) % dp
    if not usable:
        raise BucketError(f"fixed shape {shape}: {len(kept)} of {len(fits)} clip(s) are long enough for its "
                          f"{4 * shape[0]} frames, fewer than the dp={dp} ranks of one step; pass a --fixed shape "
                          f"with fewer frames")
    c = cost(geom.tokens(*shape))
    steps = usable // dp
    res = MethodResult("fixed", usable, len(fits) - usable, geom.tokens(*shape) / geom.max_tokens,
                       float(np.mean([t.crop_loss for t in kept[:usable]])),
                       float(np.mean([t.aspect_error for t in kept[:usable]])),
                       float(np.mean([t.upscaled for t in kept[:usable]])), 1, [(c,) * dp] * steps,
                       [((shape, 1),) * dp] * steps)
    if too_short:
        res.notes.append(f"{too_short} clip(s) too short for {4 * shape[0]} frames are dropped")
    return res


class StepTimes:
    """Train-step times per (shape, batch size) on the preset's model, measured in interleaved rounds (every
    shape once per round) so that load from other processes falls on all shapes alike."""

    def __init__(self, preset: str, text_tokens: int, with_motion: bool, steps: int, warmup: int, seed: int):
        import torch

        from ..model import WanS2V
        from ..model.flow import TrainConfig, make_optimizer

        self.cfg = get_preset(preset).model
        torch.manual_seed(seed)
        self.model = WanS2V(self.cfg)
        self.train_cfg = TrainConfig(seed=seed)
        self.optimizer = make_optimizer(self.model, self.train_cfg)
        self.text_tokens, self.with_motion, self.steps, self.warmup = text_tokens, with_motion, steps, warmup
        self.times: dict[tuple, list[float]] = {}
        """(shape, batch) -> every timed step of every round."""
        self.rounds: dict[tuple, list[float]] = {}
        """(shape, batch) -> the median of each round."""
        self._step = 0

    def measure(self, keys: list[tuple], rounds: int) -> None:
        for _ in range(rounds):
            for shape, batch in keys:
                ts = self.run(shape, batch)
                self.times.setdefault((shape, batch), []).extend(ts)
                self.rounds.setdefault((shape, batch), []).append(statistics.median(ts))

    def noise_floor(self) -> tuple[float, float]:
        """(median, max) over timed shapes of (max - min) / median of the shape's round medians."""
        spreads = [_spread(r) for r in self.rounds.values() if len(r) > 1]
        return (statistics.median(spreads), max(spreads)) if spreads else (0.0, 0.0)

    def run(self, shape: tuple[int, int, int], batch: int) -> list[float]:
        """Timed steps (warm-up excluded) of one fresh measurement."""
        from ..model.config import ClipShape
        from ..model.flow import synthetic_batch, train_step

        f, h, w = shape
        clip = ClipShape(f, h // 8, w // 8, text_tokens=self.text_tokens, with_motion=self.with_motion)
        data = synthetic_batch(self.cfg, clip, batch_size=batch, seed=self._step)
        out = []
        for i in range(self.warmup + self.steps):
            t0 = time.perf_counter()
            train_step(self.model, self.optimizer, data, self._step, self.train_cfg)
            dt = time.perf_counter() - t0
            self._step += 1
            if i >= self.warmup:
                out.append(dt)
        return out

    def median(self, shape: tuple[int, int, int], batch: int) -> float:
        return statistics.median(self.times[(shape, batch)])


def _spread(values: list[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values) if values else 0.0


def _metrics(res: MethodResult, times: StepTimes | None) -> list[Metric]:
    imb, worst = dp_cost_imbalance(res.step_costs)
    ms = [Metric("token_utilisation", res.utilisation, "1", "sum of real tokens / sum(slots x M) over one epoch",
                 "predicted"),
          Metric("crop_loss", res.crop_loss, "1", "mean over clips of the resized frame's area cropped away",
                 "predicted"),
          Metric("aspect_error", res.aspect_error, "1", "mean |target aspect / source aspect - 1|", "predicted"),
          Metric("upscaled", res.upscaled, "1", "fraction of clips resized up", "predicted"),
          Metric("clips", float(res.clips), "clips", "clips trained in the epoch", "predicted"),
          Metric("dropped", float(res.dropped), "clips", "clips left out of the epoch", "predicted"),
          Metric("shapes", float(res.shapes), "shapes", "distinct clip shapes trained on", "predicted"),
          Metric("predicted_dp_imbalance", imb, "1", "sum over steps of max rank cost / sum of mean rank cost - 1, "
                 "cost = clip_step_cost (6 P n + 12 L d n^2) x batch", "predicted", {"worst_step": worst})]
    if times is None:
        ms.append(Metric("measured_dp_imbalance", None, "1", "not measured (--no-measure)", "not_measured"))
        return ms
    # Partial batches are timed as the full batch scaled by their share: an approximation, said here.
    full = res.full_batch
    needed = {(shape, full.get(shape, b)) for step in res.step_shapes for shape, b in step}
    if any(k not in times.times for k in needed):
        ms.append(Metric("measured_dp_imbalance", None, "1", f"not measured: {len(needed)} shapes are more than "
                         f"this run times", "not_measured"))
        return ms
    step_times = [tuple(times.median(shape, full.get(shape, b)) * b / full.get(shape, b) for shape, b in step)
                  for step in res.step_shapes]
    mimb, mworst = dp_cost_imbalance(step_times)
    ms.append(Metric("measured_dp_imbalance", mimb, "1", "the epoch's steps with each batch's measured median "
                     "train-step time (same formula as predicted); partial batches scaled from the full batch",
                     "measured", {"worst_step": mworst}))
    return ms


def _plot_assignment(plan: BucketPlan, name: str, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.8))
    aspect = np.array([r.width / r.height for r in plan.rows])
    secs = np.array([r.seconds for r in plan.rows])
    jitter = np.random.default_rng(0).normal(0, 0.015, len(aspect))
    cmap = plt.get_cmap("tab20")
    for b in plan.buckets:
        sel = np.array([k == b.index for k in plan.bucket_of])
        ax.scatter(aspect[sel] * np.exp(jitter[sel]), secs[sel], s=6, alpha=0.6, color=cmap(b.index % 20),
                   label=f"{b.label} ({b.clips})")
    ax.set_xscale("log")
    ax.set_xlabel("source aspect W/H (log; jittered)")
    ax.set_ylabel("source duration, s")
    ax.set_title(f"{name}: bucket of each clip")
    ax.legend(fontsize=6, markerscale=2, ncol=2)
    util = plan.utilisation()[1]
    xs = range(len(plan.buckets))
    bx.bar(xs, [b.clips for b in plan.buckets], color=[cmap(b.index % 20) for b in plan.buckets])
    for b in plan.buckets:
        bx.text(b.index, b.clips, f"{util[b.index]:.1%}\nb={b.batch_size}", ha="center", va="bottom", fontsize=6)
    bx.set_xticks(list(xs), [b.label for b in plan.buckets], rotation=60, ha="right", fontsize=7)
    bx.set_ylabel("clips (label: token utilisation, batch size)")
    bx.set_title(f"{name}: buckets (M = {plan.geometry.max_tokens:,} tokens)")
    fig.tight_layout()
    png = f"buckets_{name}.png"
    atomic_save_figure(fig, out / png, dpi=110)
    plt.close(fig)
    return png


def _plot_times(points: list[tuple[str, float, list[float]]], floor: float, out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, c, ts in points:
        ax.scatter([c / 1e12] * len(ts), ts, s=10, alpha=0.5, color="tab:gray")
        ax.scatter([c / 1e12], [statistics.median(ts)], marker="_", s=200, color="k")
        ax.annotate(label, (c / 1e12, statistics.median(ts)), fontsize=6, xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel("predicted batch cost, TFLOP (clip_step_cost x batch)")
    ax.set_ylabel("train-step time, s (bar: median; warm-up excluded)")
    ax.set_title(f"Measured vs predicted (noise floor {floor:.1%})")
    fig.tight_layout()
    atomic_save_figure(fig, out / "step_time_vs_cost.png", dpi=110)
    plt.close(fig)
    return "step_time_vs_cost.png"


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from .results import check_output_folder

    out = args.out or Path("runs") / ("buckets-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    # Every option is checked before the planning and the timing (minutes), so a bad one fails at once.
    manifests = args.manifest or shipped_manifests()
    stems = [Path(m).stem for m in manifests]
    if len(set(stems)) < len(stems):  # records and plots are named by stem: one would overwrite the other
        raise ManifestError(f"--manifest {' '.join(map(str, manifests))}: two manifests share a file name "
                            f"({sorted({n for n in stems if stems.count(n) > 1})}); give each its own name")
    preset = get_preset(args.preset)
    cfg = preset.model
    geom = _geometry(cfg, args.max_tokens, args.frames, args.cp, ("--max-tokens", "--frames"))
    fmin, fmax = geom.min_latent_frames, geom.max_latent_frames
    fixed = _fixed_shape(args.fixed, geom) if args.fixed else None
    if args.base_batch > MAX_BATCH:  # cheaper buckets get larger batches, up to the cap
        raise BucketError(f"--base-batch {args.base_batch}: at most {MAX_BATCH}, the largest batch a bucket is given")
    if args.scale_preset != "none":
        big = get_preset(args.scale_preset).model
        bgeom = _geometry(big, args.scale_max_tokens, args.scale_frames, args.cp,
                          ("--scale-max-tokens", "--scale-frames"))
        smin, smax = bgeom.min_latent_frames, bgeom.max_latent_frames
    # A bucket run writes a fresh results.json (its records are not keyed to resume), so one already there,
    # maybe another benchmark's, would be lost.
    if (out / "results.json").exists():
        raise ValueError(f"--out {out} already holds a results.json, which this run would overwrite (bucket runs "
                         f"do not resume); pick a new --out, or move that file away first")
    check_output_folder(out)

    def cost(n: int) -> float:
        return clip_step_cost(cfg, n)

    log = ResultsLog(out / "results.json", resume=False)
    load_before = os.getloadavg()[0]
    common = {"preset": args.preset, "max_tokens": args.max_tokens, "latent_frames": [fmin, fmax], "dp": args.dp,
              "cp": args.cp, "seed": args.seed, "max_buckets": args.max_buckets, "base_batch": args.base_batch,
              "threads": args.threads, "steps": args.steps, "warmup": args.warmup}
    lines_tables: list[str] = []
    plots: list[str] = []
    summary_rows = []
    timing_points: list[tuple[str, float, list[float]]] = []
    verdicts = []
    prepared = []
    reads = [read_manifest(path, on_error=args.on_error, check=geom.row_problem) for path in manifests]
    for path, read in zip(manifests, reads):
        name = Path(path).stem
        rows = _usable(read, path, f"at --max-tokens {args.max_tokens} and --frames {args.frames}")
        try:  # the plan's errors say what is wrong; this says which manifest
            plan = plan_buckets(rows, geom, cost, max_buckets=args.max_buckets, base_batch=args.base_batch)
            shape = fixed or max(plan.buckets, key=lambda b: b.clips).shape
            bucketed, per_bucket = _bucketed(plan, args.dp, args.cp, args.seed)
            methods = [bucketed, _fixed(plan, shape, cost, args.dp, args.seed), _naive(plan, cost, args.dp, args.seed)]
        except (BucketError, SamplerError) as e:
            raise BucketError(f"manifest {path}: {e}") from None
        prepared.append((path, name, read, plan, shape, bucketed, per_bucket, methods))
    # Predicted-only: the same planning at the big preset's M, done before the timing so that it fails first.
    scaled = []
    if args.scale_preset != "none":
        for path in manifests:
            read = read_manifest(path, on_error="skip", check=bgeom.row_problem)
            rows = _usable(read, path, f"for the scale check (--scale-preset {args.scale_preset}, "
                                       f"--scale-max-tokens {args.scale_max_tokens}, --scale-frames "
                                       f"{args.scale_frames}; --scale-preset none skips it)")
            try:
                bplan = plan_buckets(rows, bgeom, lambda n: clip_step_cost(big, n), max_buckets=args.max_buckets,
                                     base_batch=args.base_batch)
                res, _ = _bucketed(bplan, args.dp, args.cp, args.seed)
            except (BucketError, SamplerError) as e:
                raise BucketError(f"manifest {path}, scale check (--scale-preset none skips it): {e}") from None
            scaled.append((path, read, bplan, res, _naive(bplan, lambda n: clip_step_cost(big, n), args.dp, args.seed)))
    times = None
    if not args.no_measure:
        import torch

        torch.set_num_threads(args.threads)
        times = StepTimes(args.preset, preset.clip.text_tokens, geom.with_motion, args.steps, args.warmup, args.seed)
        keys: list[tuple] = []
        for *_, methods in prepared:
            for res in methods:
                wanted = {(sh, res.full_batch.get(sh, b)) for step in res.step_shapes for sh, b in step}
                if res.name != "naive" or len(wanted) <= MAX_TIMED_NAIVE_SHAPES:
                    keys += [k for k in sorted(wanted) if k not in keys]
        print(f"timing {len(keys)} shapes x {args.repeats} interleaved rounds x ({args.warmup} warm-up + "
              f"{args.steps} timed) steps")
        times.measure(keys, args.repeats)
    for path, name, read, plan, shape, bucketed, per_bucket, methods in prepared:
        for res in methods:
            cfg_rec = {**common, "manifest": str(path), "method": res.name, "fixed_shape": list(shape),
                       "skipped_rows": len(read.skipped), "skipped_by_reason": read.skipped_by_reason()}
            metrics = _metrics(res, times)
            notes = plan.notes + res.notes if res.name == "bucketed" else res.notes
            log.append(Record("buckets", f"{name}/{res.name}", cfg_rec, metrics, notes="; ".join(notes)))
            rec = log.records[-1]
            imb = rec.metric("predicted_dp_imbalance")
            meas = rec.metric("measured_dp_imbalance")
            summary_rows.append((name, res.name, res.shapes, res.clips, res.dropped, f"{res.utilisation:.2%}",
                                 f"{res.crop_loss:.2%}", f"{res.aspect_error:.2%}", f"{res.upscaled:.1%}",
                                 f"{imb.value:.3%}", f"{imb.stats['worst_step']:.2%}",
                                 _fmt(meas.value, ".2%") if meas.value is not None else "not measured"))
            if res.name == "bucketed":
                verdicts.append((name, res.utilisation, imb.value))
        # Per-bucket table and records.
        rows = []
        for b in plan.buckets:
            members = [i for i, k in enumerate(plan.bucket_of) if k == b.index]
            crop = float(np.mean([plan.targets[i].crop_loss for i in members]))
            ms = [Metric("token_utilisation", per_bucket.get(b.index, 0.0), "1",
                         "real tokens / (slots x M) of this bucket's batches in one epoch", "predicted"),
                  Metric("crop_loss", crop, "1", "mean over the bucket's clips", "predicted"),
                  Metric("batch_cost", b.batch_cost, "FLOP", "clip_step_cost(tokens) x batch size", "predicted")]
            t_med = None
            if times is not None:
                t_med = times.median(b.shape, b.batch_size)
                ts = times.times[(b.shape, b.batch_size)]
                ms.append(Metric("step_time", t_med, "s", f"median of {len(ts)} train_steps ({args.repeats} "
                                 f"interleaved rounds of {args.steps}, each after {args.warmup} excluded warm-up "
                                 f"step(s)); shared by every manifest and method using the shape", "measured",
                                 {f"step{i}": t for i, t in enumerate(ts)}))
                timing_points.append((b.label + f" b{b.batch_size}", b.batch_cost, ts))
            log.append(Record("bucket", f"{name}/bucket{b.index}", {**common, "manifest": str(path),
                              "shape": list(b.shape), "tokens": b.tokens, "batch_size": b.batch_size,
                              "clips": b.clips, "cp_padding": b.cp_padding}, ms))
            rows.append((b.index, b.label, f"{b.tokens:,}", b.batch_size, b.clips, f"{per_bucket.get(b.index, 0):.2%}",
                         f"{crop:.2%}", f"{b.batch_cost / plan.cost_target:.3f}", _fmt(t_med, ".3f")))
        pred_spread = plan.batch_cost_spread()
        meas_spread = None
        if times is not None:
            meas_spread = _spread([times.median(b.shape, b.batch_size) for b in plan.buckets])
        lines_tables += [f"### {name} ({len(read.rows)} clips used, {len(read.skipped)} rows skipped"
                         + (f": {read.skipped_by_reason()}" if read.skipped else "") + ")", "",
                         tabulate(rows, headers=["bucket", "shape (frames HxW)", "tokens", "batch", "clips",
                                                 "token util.", "crop loss", "batch cost / target", "step s (median)"],
                                  tablefmt="pipe", disable_numparse=True), "",
                         (f"Batch cost spread across buckets ((max - min) / median): predicted {pred_spread:.2%}, "
                         f"measured {_fmt(meas_spread, '.2%')}."), ""]
        lines_tables += [f"Note: {n}." for n in plan.notes] + ([""] if plan.notes else [])
        plots.append(_plot_assignment(plan, name, out))
        print(f"{name}: {len(plan.buckets)} buckets, utilisation {bucketed.utilisation:.2%}")
    floor = floor_max = None
    if times is not None:
        floor, floor_max = times.noise_floor()
        log.append(Record("noise_floor", "noise_floor", common,
                          [Metric("noise_floor", floor, "1", f"median over the {len(times.rounds)} timed shapes of "
                                  f"(max - min) / median of the shape's {args.repeats} round medians", "measured",
                                  {"max": floor_max, **{f"{k[0]}x{k[1]}": _spread(r)
                                                        for k, r in times.rounds.items()}})]))
        plots.append(_plot_times(timing_points, floor, out))
    scale_rows, scale_notes = [], []
    for path, read, bplan, res, nres in scaled:
        name = Path(path).stem
        scale_notes += [f"{name}: {n}" for n in bplan.notes]
        for r in (res, nres):
            metrics = _metrics(r, None)
            notes = bplan.notes + r.notes if r is res else r.notes
            log.append(Record("buckets_scale", f"{name}/{args.scale_preset}/{r.name}",
                              {**common, "preset": args.scale_preset, "max_tokens": args.scale_max_tokens,
                               "latent_frames": [smin, smax], "manifest": str(path), "method": r.name,
                               "skipped_rows": len(read.skipped)}, metrics, tags=["predicted"],
                              notes="; ".join(notes)))
            imb = log.records[-1].metric("predicted_dp_imbalance")
            scale_rows.append((name, r.name, r.shapes, r.clips, len(read.skipped), f"{r.utilisation:.2%}",
                               f"{r.crop_loss:.2%}", f"{imb.value:.3%}",
                               f"{bplan.batch_cost_spread():.1%}" if r.name == "bucketed" else "",
                               f"{min(b.batch_size for b in bplan.buckets)}-{max(b.batch_size for b in bplan.buckets)}"
                               if r.name == "bucketed" else "1"))
    env = log.environment
    met = all(u >= TARGET_UTILISATION and i <= TARGET_IMBALANCE for _, u, i in verdicts)
    lines = [f"# s2vbench buckets: token-budget resolution bucketing ({args.preset} preset, M = {args.max_tokens:,})",
             "", (f"Made {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} on {env.get('cpu')} x "
             f"{env.get('cpu_count')} (torch {env.get('torch')}, {args.threads} threads; git "
             f"{(env.get('git_commit') or '?')[:12]}{' dirty' if env.get('git_dirty') else ''})."), "",
             (f"Geometry: M = {args.max_tokens:,} tokens per clip (noisy + ref + motion), latent frames {fmin}-{fmax} "
             f"({4 * fmin}-{4 * fmax} frames at 16 fps), 64-pixel multiples, no upscaling, crop preferred <= "
             f"{geom.max_crop:.0%}, at most {args.max_buckets} buckets. Simulated job: dp = {args.dp} x cp = "
             f"{args.cp}; one epoch of the sampler (seed {args.seed}). Cost = clip_step_cost = 6 P n + 12 L d n^2 "
             f"per clip, times the batch size."), "",
             "## Targets (bucketed method)", "",
             tabulate([(n, f"{u:.2%}", "yes" if u >= TARGET_UTILISATION else "NO", f"{i:.3%}",
                        "yes" if i <= TARGET_IMBALANCE else "NO") for n, u, i in verdicts],
                      headers=["manifest", "token utilisation", ">= 98%", "predicted DP imbalance", "<= 2%"],
                      tablefmt="pipe", disable_numparse=True), "",
             f"Both targets {'are met' if met else 'are NOT all met'} on these manifests at this M.", "",
             "## Methods", "",
             ("bucketed: the plan's shapes and batch sizes, the DP x CP sampler (cost-matched steps). fixed: every "
             "clip resized (up if need be) and cropped to one shape. naive: each clip at its own best shape, batch "
             "1, dealt to DP ranks in shuffled order. Imbalance = sum over steps of the slowest rank's cost / sum of "
             "the mean rank's cost - 1 (the fraction of compute spent waiting)."), "",
             tabulate(summary_rows, headers=["manifest", "method", "shapes", "clips", "dropped", "token util.",
                                             "crop loss", "aspect err.", "upscaled", "pred. DP imbalance",
                                             "worst step", "measured DP imbalance"],
                      tablefmt="pipe", disable_numparse=True), ""]
    if floor is not None:
        lines += [(f"Measured: real `train_step`s of the `{args.preset}` preset (fp32, CPU, {args.threads} threads) on "
                  f"synthetic tensors of each shape and batch size, in {args.repeats} interleaved rounds (every shape "
                  f"once per round, so load from other processes falls on all shapes alike), each of {args.warmup} "
                  f"warm-up step(s), excluded, and {args.steps} timed steps; a shape's time is the median of its "
                  f"{args.repeats * args.steps} timed steps, shared by every manifest and method that uses it. Noise "
                  f"floor: per shape, (max - min) / median of its round medians; median over shapes "
                  f"**{floor:.2%}** (worst shape {floor_max:.2%}). Measured differences below the floor are not "
                  f"resolved. The 1-minute load average was {load_before:.1f} before and {os.getloadavg()[0]:.1f} "
                  f"after the run on {os.cpu_count()} cores; above {args.threads}, other processes shared the "
                  f"cores."), ""]
    else:
        lines += ["Step times were not measured (--no-measure).", ""]
    lines += ["## Buckets", ""] + lines_tables
    lines += [f"![bucket assignment]({p})" for p in plots if p.startswith("buckets_")] + [""]
    if floor is not None:
        lines += ["## Measured step time against predicted cost", "", "![step time vs cost](step_time_vs_cost.png)", ""]
    if scale_rows:
        lines += [f"## Scale check: {args.scale_preset} at M = {args.scale_max_tokens:,} (predicted only)", "",
                  (f"The same planning at the {args.scale_preset} preset's token budget, latent frames "
                  f"{args.scale_frames.replace(',', '-')}; clips too short for it are skipped (counted). Clips whose "
                  f"source is too small or too short to reach M without upscaling keep fewer tokens, which is what "
                  f"utilisation measures; their buckets get larger batches so batch costs stay comparable."), "",
                  tabulate(scale_rows, headers=["manifest", "method", "shapes", "clips", "skipped", "token util.",
                                                "crop loss", "pred. DP imbalance", "batch cost spread",
                                                "batch sizes"], tablefmt="pipe", disable_numparse=True), ""]
        lines += [f"Note: {n} (so this plan has more shapes than --max-buckets {args.max_buckets})."
                  if "beyond max_buckets" in n else f"Note: {n}." for n in scale_notes] + ([""] if scale_notes else [])
    lines += ["Results: `results.json` (records of kind buckets, bucket, noise_floor, buckets_scale).", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    print(f"results: {out / 'results.json'}\nreport:  {out / 'report.md'}")
    return 0


if __name__ == "__main__":  # the same command, and the same error handling, as ``s2vbench buckets``
    import sys

    from .cli import main

    raise SystemExit(main(["buckets", *sys.argv[1:]]))
