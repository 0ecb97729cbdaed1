"""The interim main job: build each CPU preset, run a forward and timed training steps, write the results.

This stands in for the full benchmark harness (iteration speed-up across GPU counts), which replaces it."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from tabulate import tabulate

from ..model import WanS2V, get_preset, sequence_layout
from ..model.flow import TrainConfig, make_optimizer, synthetic_batch, train_step
from .analytic import forward_flops
from .results import Metric, Record, ResultsLog


def smoke_point(preset_name: str, dtype: str, steps: int, warmup: int, seed: int = 0) -> Record:
    preset = get_preset(preset_name)
    clip = preset.clip
    layout = sequence_layout(preset.model, clip.latent_frames, clip.latent_height, clip.latent_width, clip.with_motion)
    torch.manual_seed(seed)
    model = WanS2V(preset.model)
    cfg = TrainConfig(seed=seed, dtype=dtype)
    opt = make_optimizer(model, cfg)
    batch = synthetic_batch(preset.model, clip, batch_size=1, seed=seed)
    times, losses = [], []
    for step in range(warmup + steps):
        start = time.perf_counter()
        stats = train_step(model, opt, batch, step, cfg)
        elapsed = time.perf_counter() - start
        if step >= warmup:
            times.append(elapsed)
            losses.append(stats.loss)
    flops = 3 * forward_flops(preset.model, layout).total
    median = statistics.median(times)
    how = (f"time.perf_counter around train_step (forward, loss, backward, AdamW), {warmup} warm-up step(s) excluded; "
           f"median of {steps}, {torch.get_num_threads()} thread(s)")
    return Record(
        kind="model_smoke", name=f"{preset_name}-{dtype}",
        config={"preset": preset_name, "model": preset.model, "clip": clip, "train": cfg, "steps": steps,
                "warmup": warmup, "tokens": layout.total},
        metrics=[
            Metric("step_time", median, "s", how, stats={"median": median, "min": min(times), "max": max(times),
                                                          "n": len(times)}),
            Metric("throughput", flops / median / 1e9, "GFLOP/s",
                   "analytic training FLOPs (3x forward, bench.analytic) / median step_time"),
            Metric("loss", losses[-1], "1", "flow-matching MSE of the last timed step (random data)"),
            Metric("tokens", float(layout.total), "tokens", "sequence length [noisy | ref | motion]"),
        ])


def run_smoke(out_dir: Path, presets: tuple[str, ...] = ("tiny", "small"), dtypes: tuple[str, ...] = ("float32",),
              steps: int = 3, warmup: int = 1) -> Path:
    path = out_dir / "results.json"
    log = ResultsLog(path)
    rows = []
    for name in presets:
        for dtype in dtypes:
            if log.done(f"{name}-{dtype}"):
                continue
            rec = log.append(smoke_point(name, dtype, steps, warmup))
            m = {x.name: x for x in rec.metrics}
            rows.append((rec.name, int(m["tokens"].value), f"{m['step_time'].value:.3f}",
                         f"{m['step_time'].stats['min']:.3f}", f"{m['step_time'].stats['max']:.3f}",
                         f"{m['throughput'].value:.1f}", f"{m['loss'].value:.4f}"))
    print("model smoke run (CPU): the full benchmark harness will replace this job")
    print(tabulate(rows, headers=["point", "tokens", "step s (median)", "min s", "max s", "GFLOP/s", "loss"]))
    print(f"results: {path}")
    return path
