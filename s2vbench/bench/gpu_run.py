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
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from .ground import RUN_RANKS_SLACK_S, ground_points, run_ground
from .kernels import (RING_LOCAL_VARIANT, AttnShape, ConvShape, attention_benchmark, attention_correctness,
                      attention_providers, conv_benchmark, smoke_attention_shapes, wan_attention_shapes,
                      wan_conv_shapes)
from .points import Point
from .report import attention_table, machine
from .results import Metric, Record, ResultsLog


DEFAULT_BUDGET_MIN = 8.0
"""Fits one device command (at most 10 min) with the machine's start inside a 15-minute lease."""
ATTENTION_POINT_S, MODEL_STAGE_S, GROUND_POINT_S = 60.0, 120.0, 75.0
"""Time each stage asks to have left before it starts a point (s), at the default budget; earlier stages
leave the later ones theirs. A shorter budget scales them down together, so no stage is starved outright."""


CORRECTNESS_VARIANTS = ("pointer", "tma", "tma_ws", RING_LOCAL_VARIANT)
"""The correctness stage's records, one a variant (named here so that a resume knows them)."""


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


def _attention_name(shape: AttnShape, provider: str, dtype: torch.dtype) -> str:
    return f"attention/{shape.name}/{provider}/{str(dtype).replace('torch.', '')}"


def _conv_name(shape: ConvShape, dtype: torch.dtype) -> str:
    return f"causal-conv/{shape.name}/{dtype}"


def _same_shape(shape) -> Callable[[dict], bool]:
    return lambda config: config.get("shape") == asdict(shape)


def _same_point(point: Point) -> Callable[[dict], bool]:
    def check(config: dict) -> bool:
        try:
            return Point.from_dict(config) == point
        except TypeError:  # not a point's config at all
            return False
    return check


def _own_records(device: torch.device, dtype: torch.dtype, correctness_n: int | None, shapes: list[AttnShape],
                 model: Point, ground: list[Point], convs: list[ConvShape]
                 ) -> dict[str, tuple[tuple[str, ...], Callable[[dict], bool]]]:
    """Every record this gpu-run may write, by name: the kinds it may have and a check that its config is the one
    this run would measure (a smoke run's conv shapes share the real run's names, at an eighth of the width)."""
    anything = lambda config: True  # noqa: E731 (the name carries all of a correctness check's settings)
    own: dict[str, tuple[tuple[str, ...], Callable[[dict], bool]]] = {}
    if correctness_n is None:
        own["attention-correctness/needs-cuda"] = (("attention_correctness",), anything)
    for variant in CORRECTNESS_VARIANTS if correctness_n is not None else ():
        own[f"attention-correctness/{variant}/{correctness_n}/{dtype}"] = (("attention_correctness",), anything)
    for shape in shapes:  # flash_attn too where it does not import now: an earlier run may have had it
        for provider in {*attention_providers(device), "flash_attn"}:
            own[_attention_name(shape, provider, dtype)] = (("attention_kernel",), _same_shape(shape))
    own[model.name] = (("iteration",), _same_point(model))
    for point in ground:  # before 2026-12-08 run_ground recorded a grounding point that failed as an iteration
        own[f"ground/{point.name}"] = (("ground", "iteration"), _same_point(point))
    for shape in convs:
        own[_conv_name(shape, dtype)] = (("causal_conv_kernel",), _same_shape(shape))
    return own


def _listed(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_resumable(log: ResultsLog, own: dict[str, tuple[tuple[str, ...], Callable[[dict], bool]]]) -> None:
    """Refuse to add to a results file that holds records this gpu-run would not have written there: another
    command's (``run``'s iterations, say), gpu-run's with other settings (--smoke), or any measured on another
    machine. Resuming keeps every record already there, so the file would mix them, and ``report`` with them."""
    here = machine(log.environment)
    foreign = [r for r in log.records if r.name not in own or r.kind not in own[r.name][0]]
    other_settings = [r for r in log.records
                      if r.name in own and r.kind in own[r.name][0] and not own[r.name][1](r.config)]
    elsewhere = [r for r in log.records if machine(r.environment) != here]
    problems = []
    if foreign:
        kinds = sorted({r.kind for r in foreign})
        problems.append(f"{len(foreign)} record(s) gpu-run does not write here (kind {', '.join(kinds)}: "
                        f"{_listed([r.name for r in foreign])})")
    if other_settings:
        problems.append(f"{len(other_settings)} of gpu-run's record(s) measured with other settings (--smoke or "
                        f"not, or an older s2vbench: {_listed([r.name for r in other_settings])})")
    if elsewhere:
        there = sorted({machine(r.environment) for r in elsewhere})
        problems.append(f"{len(elsewhere)} measured on another machine ({'; '.join(there)}; this one is {here})")
    if problems:
        raise ValueError(f"{log.path} holds {'; '.join(problems)}. gpu-run resumes only its own results from this "
                         f"machine, and adding to this file would mix them: pass a new --out, or move {log.path} "
                         f"aside")


def _attention_stage(shapes, log: ResultsLog, budget: Budget, dtype: torch.dtype, device: torch.device,
                     reserve_s: float) -> None:
    """Every provider at each shape while the budget keeps ``reserve_s`` for later stages; one failing provider
    (unsupported on this GPU, say) is recorded as not measured and the rest go on."""
    for shape in shapes:
        for provider in attention_providers(device):
            name = _attention_name(shape, provider, dtype)
            if log.done(name) or not budget.allows(budget.need(ATTENTION_POINT_S) + reserve_s):
                continue
            try:
                log.append(attention_benchmark(shape, provider, dtype, device))
            except Exception as e:
                log.append(Record("attention_kernel", name, {"shape": vars(shape), "provider": provider},
                                  [Metric.failed(f"{p}_time", "ms", e) for p in ("fwd", "bwd", "fwd_bwd")]))


def gpu_run_outcome(records: list[Record]) -> str | None:
    """One line on what went wrong, for a non-zero exit status (the results are written all the same): points
    that failed, kernels that failed their correctness check, or nothing measured at all. None otherwise: a row
    not measured for a stated reason (Triton without CUDA) and a model point out of memory are findings."""
    # Metric.failed's how, and failure_record's tag: what measuring raised, kept in the record
    failed = [r.name for r in records if "failed" in r.tags or any(m.how.startswith("failed:") for m in r.metrics)]
    wrong = [r.name for r in records if r.kind == "attention_correctness"
             and any(m.name == "passed" and m.value == 0.0 for m in r.metrics)]
    problems = []
    if failed:
        problems.append(f"{len(failed)} of {len(records)} points failed ({_listed(failed)}); each one's error is in "
                        f"its record and in `s2vbench report`, and a resume measures it again only once its record "
                        f"is removed from results.json")
    if wrong:
        problems.append(f"{len(wrong)} attention kernel(s) failed the correctness check, an error above 2x torch's "
                        f"own ({_listed(wrong)})")
    if problems:
        return "; ".join(problems)
    if not any(m.status == "measured" for r in records for m in r.metrics):
        return "nothing was measured: the budget ran out before the first benchmark; give it more --budget-min"
    return None


def gpu_run(out_dir: Path, budget_minutes: float = DEFAULT_BUDGET_MIN, smoke: bool | None = None) -> Path:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    smoke = device.type != "cuda" if smoke is None else smoke
    log = ResultsLog(out_dir / "results.json")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    correctness_n = (2048 if smoke else 32768) if device.type == "cuda" else None
    shapes = smoke_attention_shapes() if smoke else wan_attention_shapes()
    per_rank = [s for s in shapes if "rank" in s.name or "block" in s.name]
    # on a GPU, the single-GPU report point (14b width, 2 blocks, AC, 44,544 tokens)
    model = (Point("14b-2layer", 1, "single", global_batch=1, ac=True, dtype="bfloat16", steps=3, warmup=1)
             if device.type == "cuda" else Point("tiny", 1, "single", global_batch=1, steps=1, warmup=1))
    ground = ground_points(world=8 if device.type == "cuda" else 2, on_gpu=device.type == "cuda")
    convs = wan_conv_shapes(scale=8 if smoke else 1)
    check_resumable(log, _own_records(device, dtype, correctness_n, shapes, model, ground, convs))
    budget = Budget(budget_minutes)  # after the checks: the lease's minutes are for measuring

    # 1. correctness
    if correctness_n is not None:
        if not log.done(f"attention-correctness/pointer/{correctness_n}/{dtype}"):
            log.extend(attention_correctness(correctness_n, dtype, device, variants=CORRECTNESS_VARIANTS))
    elif not log.done("attention-correctness/needs-cuda"):
        log.append(Record("attention_correctness", "attention-correctness/needs-cuda", {},
                          [Metric("passed", None, "1", "bf16 correctness needs a GPU (the interpreter computes bf16 "
                                  "wrongly); the CPU test suite covers float32", status="not_measured")]))
    # 2. attention at the paper's per-rank shapes, leaving the model stages their time
    _attention_stage(per_rank, log, budget, dtype, device, budget.need(MODEL_STAGE_S + 2 * GROUND_POINT_S))
    if device.type == "cuda":  # the children below get the GPU's memory, not this process's cached blocks
        torch.cuda.empty_cache()
    # 3. model step and memory
    if budget.allows(budget.need(MODEL_STAGE_S)) and not log.done(model.name):
        from ..parallel.launch import RankFailed, run_ranks
        from .sweep import failure_record, point_record
        from .worker import run_point_rank

        # a step that hangs must leave the grounding its points
        model_timeout = max(budget.need(MODEL_STAGE_S),
                            budget.left_s() - RUN_RANKS_SLACK_S - budget.need(2 * GROUND_POINT_S))
        try:
            log.append(point_record(model, run_ranks(run_point_rank, 1, model.to_dict(), backend="gloo",
                                                     timeout_s=model_timeout)))
        except (RankFailed, TimeoutError) as e:
            log.append(failure_record(model, e))
    # 4. rank 0's share of the 8-GPU job: compute measured, communication modelled
    run_ground(ground, log, left_s=budget.left_s, need_s=budget.need(GROUND_POINT_S))
    # 5. causal conv, 6. what is left of the lease: the attention sweep over N
    for shape in convs:
        name = _conv_name(shape, dtype)
        if budget.allows(30) and not log.done(name):
            try:
                log.append(conv_benchmark(shape, dtype, device))
            except Exception as e:  # recorded; the attention sweep still gets the rest of the lease
                log.append(Record("causal_conv_kernel", name, {"shape": vars(shape), "dtype": str(dtype)},
                                  [Metric.failed("triton_time", "us", e)]))
    _attention_stage([s for s in shapes if s not in per_rank], log, budget, dtype, device, 0.0)
    print(attention_table(log.records, tablefmt="simple"))
    print(f"results: {log.path} ({len(log.records)} records, device {log.environment.get('device')})")
    return log.path


__all__ = ["Budget", "CORRECTNESS_VARIANTS", "check_resumable", "gpu_run", "gpu_run_outcome"]
