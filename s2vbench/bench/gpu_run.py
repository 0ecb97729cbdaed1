"""``s2vbench gpu-run``: make one GPU lease count (default budget 8 minutes: one device command).

Runs in priority order and writes every result the moment it exists (atomic, incremental); stage 2 stops
early enough to leave stages 3 and 4 their time, and stages 5 and 6 spend whatever is left:
1. bf16 correctness of the attention kernels at N = 32k against float64, next to torch SDPA's error, and of
   the local attention ring and Ulysses use on a GPU (aten's flash attention; two key blocks merged);
2. attention benchmark at the paper's 8-GPU per-rank shapes (Ulysses: 44,544 tokens x 5 heads; ring:
   5,568-token blocks x 40 heads), against SDPA cuDNN / flash and flash-attn when it imports;
3. the single-GPU model report: the 14b width with 2 blocks and their 2 injectors, AC on, bf16, at 44,544
   tokens (48 frames of 1024x768): step time, TFLOP/s, MFU, memory, NVML power;
4. the claim grounded on one GPU (``bench/ground.py``): rank 0's share of the 8-rank Ulysses and ring jobs
   under a fake process group, at the paper's per-rank shapes, next to the performance model (the shipped
   profile of the device that ran it);
5. the causal-conv benchmark at the real shape (T = 153);
6. the attention benchmark at Wan shapes (B=1, H=40, D=128, N 4k..80k), as far as the budget goes.
A second run with the same ``--out`` resumes: finished points are skipped.
Needs nothing beyond the GPU image (torch, triton, numpy, tabulate); run from the repository root with
``PYTHONPATH=.``.
Without CUDA it runs tiny shapes: torch rows are timed on CPU and Triton rows say plainly they need CUDA.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tabulate import tabulate

from .ground import RUN_RANKS_SLACK_S, ground_points, run_ground
from .kernels import (attention_benchmark, attention_correctness, attention_providers, conv_benchmark,
                      smoke_attention_shapes, wan_attention_shapes, wan_conv_shapes)
from .results import Metric, Record, ResultsLog


DEFAULT_BUDGET_MIN = 8.0
"""Fits one device command (at most 10 min) with the machine's start inside a 15-minute lease."""
ATTENTION_POINT_S, MODEL_STAGE_S, GROUND_POINT_S = 60.0, 120.0, 75.0
"""Time each stage asks to have left before it starts a point (s), at the default budget; earlier stages
leave the later ones theirs. A shorter budget scales them down together, so no stage is starved outright."""


class Budget:
    """Wall-clock budget of the lease; each stage asks before it starts a point."""

    def __init__(self, minutes: float):
        self.deadline = time.monotonic() + 60 * minutes
        self.scale = min(1.0, minutes / DEFAULT_BUDGET_MIN)

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def need(self, seconds: float) -> float:
        """A stage's default need (s) at this budget."""
        return seconds * self.scale

    def allows(self, need_s: float) -> bool:
        return self.left_s() > need_s


def _summary(records: list[Record]) -> str:
    rows = []
    by_shape: dict[str, dict[str, Record]] = {}
    for r in records:
        if r.kind == "attention_kernel":
            by_shape.setdefault(r.config["shape"]["name"], {})[r.config["provider"]] = r
    for shape, provs in by_shape.items():
        base = provs.get("sdpa_cudnn")
        for prov, r in provs.items():
            f, b = r.metric("fwd_time"), r.metric("bwd_time")
            if f.value is None:
                rows.append((shape, prov, "not measured", "", "", ""))
                continue
            ratio_f = ratio_b = ""
            if base is not None and base.metric("fwd_time").value:
                ratio_f = f"{base.metric('fwd_time').value / f.value:.2f}x"
                ratio_b = f"{base.metric('bwd_time').value / b.value:.2f}x"
            rows.append((shape, prov, f"{r.metric('fwd_tflops').value:.1f}", f"{r.metric('bwd_tflops').value:.1f}",
                         ratio_f, ratio_b))
    return tabulate(rows, headers=["shape", "provider", "fwd TFLOP/s", "bwd TFLOP/s", "fwd vs cuDNN",
                                   "bwd vs cuDNN"])


def _attention_stage(shapes, log: ResultsLog, budget: Budget, dtype: torch.dtype, device: torch.device,
                     reserve_s: float) -> None:
    """Every provider at each shape while the budget keeps ``reserve_s`` for later stages; one failing provider
    (unsupported on this GPU, say) is recorded as not measured and the rest go on."""
    for shape in shapes:
        for provider in attention_providers(device):
            name = f"attention/{shape.name}/{provider}/{str(dtype).replace('torch.', '')}"
            if log.done(name) or not budget.allows(budget.need(ATTENTION_POINT_S) + reserve_s):
                continue
            try:
                log.append(attention_benchmark(shape, provider, dtype, device))
            except Exception as e:
                log.append(Record("attention_kernel", name, {"shape": vars(shape), "provider": provider},
                                  [Metric.failed(f"{p}_time", "ms", e) for p in ("fwd", "bwd", "fwd_bwd")]))


def gpu_run(out_dir: Path, budget_minutes: float = DEFAULT_BUDGET_MIN, smoke: bool | None = None) -> Path:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    smoke = device.type != "cuda" if smoke is None else smoke
    budget = Budget(budget_minutes)
    log = ResultsLog(out_dir / "results.json")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    # 1. correctness
    if device.type == "cuda":
        n = 2048 if smoke else 32768
        if not log.done(f"attention-correctness/pointer/{n}/{dtype}"):
            log.extend(attention_correctness(n, dtype, device))
    elif not log.done("attention-correctness/needs-cuda"):
        log.append(Record("attention_correctness", "attention-correctness/needs-cuda", {},
                          [Metric("passed", None, "1", "bf16 correctness needs a GPU (the interpreter computes bf16 "
                                  "wrongly); the CPU test suite covers float32", status="not_measured")]))
    # 2. attention at the paper's per-rank shapes, leaving the model stages their time
    shapes = smoke_attention_shapes() if smoke else wan_attention_shapes()
    per_rank = [s for s in shapes if "rank" in s.name or "block" in s.name]
    _attention_stage(per_rank, log, budget, dtype, device, budget.need(MODEL_STAGE_S + 2 * GROUND_POINT_S))
    if device.type == "cuda":  # the children below get the GPU's memory, not this process's cached blocks
        torch.cuda.empty_cache()
    # 3. model step and memory: on a GPU, the single-GPU report point (14b width, 2 blocks, AC, 44,544 tokens)
    if budget.allows(budget.need(MODEL_STAGE_S)):
        from .points import Point
        from .sweep import failure_record, point_record
        from .worker import run_point_rank

        point = (Point("14b-2layer", 1, "single", global_batch=1, ac=True, dtype="bfloat16", steps=3, warmup=1)
                 if device.type == "cuda" else Point("tiny", 1, "single", global_batch=1, steps=1, warmup=1))
        if not log.done(point.name):
            from ..parallel.launch import RankFailed, run_ranks

            # a step that hangs must leave the grounding its points
            model_timeout = max(budget.need(MODEL_STAGE_S),
                                budget.left_s() - RUN_RANKS_SLACK_S - budget.need(2 * GROUND_POINT_S))
            try:
                log.append(point_record(point, run_ranks(run_point_rank, 1, point.to_dict(), backend="gloo",
                                                         timeout_s=model_timeout)))
            except (RankFailed, TimeoutError) as e:
                log.append(failure_record(point, e))
    # 4. rank 0's share of the 8-GPU job: compute measured, communication modelled
    points = ground_points(world=8 if device.type == "cuda" else 2, on_gpu=device.type == "cuda")
    run_ground(points, log, left_s=budget.left_s, need_s=budget.need(GROUND_POINT_S))
    # 5. causal conv, 6. what is left of the lease: the attention sweep over N
    for shape in wan_conv_shapes(scale=8 if smoke else 1):
        name = f"causal-conv/{shape.name}/{dtype}"
        if budget.allows(30) and not log.done(name):
            try:
                log.append(conv_benchmark(shape, dtype, device))
            except Exception as e:  # recorded; the attention sweep still gets the rest of the lease
                log.append(Record("causal_conv_kernel", name, {"shape": vars(shape), "dtype": str(dtype)},
                                  [Metric.failed("triton_time", "us", e)]))
    _attention_stage([s for s in shapes if s not in per_rank], log, budget, dtype, device, 0.0)
    print(_summary(log.records))
    print(f"results: {log.path} ({len(log.records)} records, device {log.environment.get('device')})")
    return log.path


__all__ = ["Budget", "gpu_run"]
