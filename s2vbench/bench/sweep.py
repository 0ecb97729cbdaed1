"""Run sweep points, each in its own process group, and write one record per point as soon as it exists.

A point whose rank is killed (SIGKILL, the kernel's oom-killer) or raises an out-of-memory error is recorded
as OOM and the sweep goes on; any other failure is recorded as failed with its traceback. A re-run resumes:
points already in the results file are skipped.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from pathlib import Path

import torch

from ..model import clip_layout, get_preset
from ..parallel.launch import RankFailed, default_backend, run_ranks
from ..parallel.local_attention import check_backend_runs_here
from .analytic import CommVolume, forward_flops, fsdp_comm_volume, training_state_bytes, training_step_comm_volume
from .hardware import bf16_peak_tflops
from .points import Point
from .results import Metric, Record, ResultsLog
from .worker import run_point_rank

GIB = 2**30
COMM_TIME_PROFILED = ("s per step, max over ranks: torch.profiler of the counted step, summed execution ranges of "
                      "this kind's collectives (gloo: on its worker thread, dequeue to completion; NCCL: kernel "
                      "time). Busy time: includes waiting for the slowest peer and overlaps compute (exposed "
                      "time is step - compute-only)")
COMM_TIME_WALL = ("s per step, max over ranks: main-thread wall time of the parallel.comm counters (blocking call to "
                  "return; ring exchanges post to end of wait, spanning the attention computed meanwhile)")


def _median_max_over_ranks(per_rank: list[list[float]]) -> tuple[float, list[float]]:
    steps = [max(ts) for ts in zip(*per_rank)]
    return statistics.median(steps), steps


def _step_stats(steps: list[float]) -> dict[str, float]:
    """min, max, n and each timed step (``step0``, ...) of a metric: what ``results.step_times`` reads back."""
    return {"min": min(steps), "max": max(steps), "n": len(steps), **{f"step{i}": t for i, t in enumerate(steps)}}


def gpu_power_metric(nvml: list[dict | str | None]) -> Metric:
    """GPU power from each rank's NVML summary (a dict), or not measured with the first rank's reason (a str)."""
    if nvml and all(isinstance(n, dict) for n in nvml):
        return Metric("gpu_power", max(n["power_w_mean"] for n in nvml), "W",
                      "NVML, mean over the timed steps, max over ranks (sampled every 0.1 s)",
                      stats={"max": max(n["power_w_max"] for n in nvml),
                             "sm_util_mean": max(n["sm_util_mean"] for n in nvml),
                             "memory_used_gib_max": max(n["memory_used_gib_max"] for n in nvml)})
    why = next((n for n in nvml if isinstance(n, str)), "NVML sampling needs a GPU (absent on CPU)")
    return Metric("gpu_power", None, "W", why, status="not_measured")


def point_record(point: Point, results: list[dict]) -> Record:
    preset = get_preset(point.preset)
    clip = point.clip()
    layout = clip_layout(preset.model, clip)
    fwd = forward_flops(preset.model, layout).total
    train_flops = 3 * fwd * point.global_batch
    recompute = (fwd * point.global_batch) if point.ac else 0.0
    metrics: list[Metric] = []
    reason = "oversubscribed: more ranks than cores, run for correctness and bytes only"
    if point.oversubscribed:
        for name, unit in (("step_time", "s"), ("compute_time", "s"), ("exposed_comm", "s"),
                           ("samples_per_s_per_device", "samples/s"), ("tflops_per_device", "TFLOP/s")):
            metrics.append(Metric(name, None, unit, reason, status="not_measured"))
    else:
        step, steps = _median_max_over_ranks([r["real"]["times"] for r in results])
        how = (f"per step the slowest rank (perf_counter on CPU, CUDA events on GPU), median over {point.steps} "
               f"timed steps; {point.warmup} warm-up step(s) excluded")
        metrics.append(Metric("step_time", step, "s", how, stats={**_step_stats(steps), "warmup": point.warmup}))
        if results[0]["compute"] is not None:
            compute, _ = _median_max_over_ranks([r["compute"]["times"] for r in results])
            metrics.append(Metric("compute_time", compute, "s",
                                  f"same ranks and shapes with every collective a no-op (torch fake process group), "
                                  f"median over {point.steps} steps run after the real ones in the same process ("
                                  + (f"{point.warmup} warm-up step(s) absorb recompilation)" if point.compile else
                                     "no warm-up of its own: the real steps warmed the process)")))
            metrics.append(Metric("exposed_comm", max(0.0, step - compute), "s", "step_time - compute_time",
                                  stats={"share": max(0.0, step - compute) / step}))
        else:
            metrics.append(Metric("compute_time", step, "s", "one rank: no collectives"))
            metrics.append(Metric("exposed_comm", 0.0, "s", "one rank: no collectives", stats={"share": 0.0}))
        if results[0]["real"].get("inference_times"):
            inf, inf_steps = _median_max_over_ranks([r["real"]["inference_times"] for r in results])
            metrics.append(Metric("inference_step_time", inf, "s",
                                  "one CFG denoising step (2 no-grad forwards of the rank's batch), slowest rank, "
                                  "median, warm-up excluded",
                                  stats=_step_stats(inf_steps)))
        metrics.append(Metric("samples_per_s_per_device", point.global_batch / step / point.world, "samples/s",
                              "global batch / step_time / ranks"))
        metrics.append(Metric("tokens_per_s_per_device", point.global_batch * layout.total / step / point.world,
                              "tokens/s", "global batch x sequence tokens / step_time / ranks"))
        metrics.append(Metric("tflops_per_device", train_flops / step / point.world / 1e12, "TFLOP/s",
                              "model FLOPs (3x forward, bench.analytic, no recompute) / step_time / ranks",
                              stats={"recompute_flops_share": recompute / (train_flops + recompute)}))
    peak = bf16_peak_tflops(results[0].get("device_name"))
    tflops = next((m.value for m in metrics if m.name == "tflops_per_device"), None)
    if peak is not None and tflops is not None:
        metrics.append(Metric("mfu", tflops / peak, "1", f"tflops_per_device / {peak} TFLOP/s dense bf16 peak of "
                                                         f"{results[0]['device_name']} (datasheet, not measured)"))
    else:
        metrics.append(Metric("mfu", None, "1", "needs the device's bf16 peak; none is known for this device "
                                                "(CPUs included)", status="not_measured"))
    metrics.append(gpu_power_metric([r["real"].get("nvml") for r in results]))
    if any("peak_allocated" in r["real"] for r in results):
        metrics.append(Metric("cuda_peak_allocated", max(r["real"]["peak_allocated"] for r in results) / GIB, "GiB",
                              "torch.cuda.max_memory_allocated, max over ranks",
                              stats={"reserved": max(r["real"]["peak_reserved"] for r in results) / GIB}))
    metrics.append(Metric("peak_rss", max(r["peak_rss"] for r in results) / GIB, "GiB",
                          "max over ranks of the process's peak resident set size (getrusage)"))
    metrics.append(Metric("saved_activations", max(r["real"]["saved_activation_bytes"] for r in results) / GIB,
                          "GiB", "max over ranks: tensors saved for backward in one step, deduplicated by storage, "
                                 "parameters excluded (saved-tensor hooks)"))
    if all("tracked_peak_bytes" in r["real"] for r in results):
        metrics.append(Metric("tracked_peak_memory", max(r["real"]["tracked_peak_bytes"] for r in results) / GIB,
                              "GiB", "max over ranks: the most tensor storage live at once in the counted step, "
                                     "every op's tensors tracked until freed (parameters, gradients and optimizer "
                                     "state included; not the allocator's caching), the counterpart of "
                                     "max_memory_allocated on any device"))
    shards = point.parallel_config().shard_group_size
    for part, value in training_state_bytes(preset.model, shards).items():
        metrics.append(Metric(f"analytic_{part}", value / GIB, "GiB",
                              "float32, sharded by FSDP over all ranks (over one replica group's under HSDP)",
                              status="predicted"))
    _, u, r = point.degrees
    analytic = {}
    if point.strategy != "single":  # per micro-batch, times the micro-batches; one loss all-reduce per step
        ga = point.grad_accum
        per_micro = training_step_comm_volume(preset.model, layout, point.micro_batch, u, r, elem_bytes=4)
        per_micro.update(fsdp_comm_volume(preset.model, shards, 4, 4, with_motion=clip.with_motion,
                                          replicate=point.dp_replicate))
        analytic = {k: (v if k == "all_reduce" else CommVolume(v.calls * ga, v.bytes_sent * ga))
                    for k, v in per_micro.items()}
    kinds = set(analytic) | {k for res in results for k in res["real"]["comm"]}
    profiled_ok = all("comm_profiled" in res["real"] for res in results)
    for kind in sorted(kinds):
        sent = max(res["real"]["comm"].get(kind, {}).get("bytes_sent", 0) for res in results)
        wall = max(res["real"]["comm"].get(kind, {}).get("seconds", 0.0) for res in results)
        calls = max(res["real"]["comm"].get(kind, {}).get("calls", 0) for res in results)
        prof = [res["real"].get("comm_profiled", {}).get(kind) for res in results]
        if profiled_ok and calls and all(p is not None and p["calls"] == p["launched"] > 0 for p in prof):
            secs, how = max(p["seconds"] for p in prof), COMM_TIME_PROFILED
        elif kind.startswith(("fsdp_", "hsdp_")):  # FSDP2's own collectives: only the profiler can time them
            secs, how = None, "not measured: no profiled execution range matched every launch"
        else:
            secs, how = wall, COMM_TIME_WALL
        want = analytic.get(kind)
        metrics.append(Metric(f"comm_{kind}", float(sent), "bytes",
                              "max over ranks of bytes sent in one step (parallel.comm counters)",
                              stats={"analytic": float(want.bytes_sent) if want else 0.0, "seconds": secs,
                                     "wall_seconds": wall, "calls": calls}))
        if calls:  # kinds that did not run get no time metric
            metrics.append(Metric(f"collective_time_{kind}", secs, "s", how,
                                  status="measured" if secs is not None else "not_measured",
                                  stats={"calls": calls, "wall_seconds": wall}))
    if point.compile:
        comp = [r["real"].get("compile") or {} for r in results]
        rerun = [((r.get("compute") or {}).get("compile") or {}).get("seconds", 0.0) for r in results]
        reasons = sorted({x for c in comp for x in c.get("break_reasons", [])})
        metrics.append(Metric("compile_time", max(c.get("seconds", 0.0) for c in comp), "s",
                              "max over ranks of torch.compile's time (dynamo frames + lazy backward compiles) "
                              "during the warm-up and timed steps; the warm-up steps absorb it" +
                              (f"; graph breaks: {'; '.join(reasons)}" if reasons else ""),
                              stats={"graph_breaks": max(c.get("graph_breaks", 0) for c in comp),
                                     "unique_graphs": max(c.get("unique_graphs", 0) for c in comp),
                                     "compute_only_rerun": max(rerun)}))
    tags = ["oversubscribed"] if point.oversubscribed else []
    traces = [r["real"]["trace"] for r in results if r["real"].get("trace")]
    config = point.to_dict() | {"tokens": layout.total, "tokens_requested": point.tokens, "model": preset.model,
                                "clip": clip}
    return Record("iteration", point.name, config, metrics, tags=tags,
                  notes=f"Chrome trace: {traces[0]}" if traces else "")


def _last_lines(text: str, limit: int) -> str:
    """The last whole lines of ``text`` that fit in ``limit`` characters (where an error's own line is, at the
    end of a traceback); the last line alone, cut at its start, when it is longer."""
    lines = text.rstrip().splitlines()
    kept: list[str] = []
    while lines and sum(len(x) + 1 for x in kept) + len(lines[-1]) <= limit:
        kept.insert(0, lines.pop())
    if not kept and lines:
        return "..." + lines[-1][-(limit - 3):]
    return ("...\n" if lines else "") + "\n".join(kept)


def failure_record(point: Point, error: BaseException) -> Record:
    text = str(error)
    # a SIGKILL (the kernel's oom-killer), CUDA's or our own OOM, or the CPU allocator refusing (no overcommit)
    oom = bool(re.search(r"exit(ed with )?code\s*:?\s*-9|OutOfMemoryError|out of memory|PointOOM|"
                         r"can't allocate memory", text, re.IGNORECASE))
    status = "oom" if oom else "failed"
    return Record("iteration", point.name, point.to_dict(),
                  [Metric("step_time", None, "s", f"{status}: {_last_lines(text, 500)}", status="not_measured")],
                  tags=[status], notes=_last_lines(text, 4000))


def check_resume(records: list[Record], points: list[Point], where: str | Path, environment: dict | None) -> None:
    """Refuse to resume over records of these points measured with other settings, or on another machine than
    ``environment``'s (as gpu-run refuses its own; None: not checked): a point's name leaves out its steps,
    warm-up, other fields and the machine, so such a record would pass as this sweep's and be kept."""
    from .report import machine

    wanted = {p.name: p for p in points}
    here = machine(environment) if environment is not None else None
    clashes = []
    for r in records:
        point = wanted.get(r.name)
        if point is None:
            continue
        if here is not None and machine(r.environment) != here:
            clashes.append(f"{r.name} (measured on {machine(r.environment)}; this machine is {here})")
            continue
        try:
            saved = Point.from_dict(r.config)
        except TypeError as e:  # a field missing or of another kind: not a point this s2vbench can compare
            clashes.append(f"{r.name}: its config is not a sweep point ({e})")
            continue
        diff = [f"{f.name} {getattr(saved, f.name)!r} there, {getattr(point, f.name)!r} now"
                for f in dataclasses.fields(Point) if getattr(saved, f.name) != getattr(point, f.name)]
        if diff:
            clashes.append(f"{r.name} ({', '.join(diff)})")
    if clashes:
        more = f"; and {len(clashes) - 3} more" if len(clashes) > 3 else ""
        raise ValueError(f"{where} already holds {len(clashes)} of this sweep's points measured with other settings "
                         f"or elsewhere, which resuming would keep as this sweep's: {'; '.join(clashes[:3])}{more}. Re-run with "
                         f"the settings they were measured with, write to a new --out, or remove those records "
                         f"from the file")


def sweep_outcome(records: list[Record], points: list[Point]) -> str | None:
    """One line on what went wrong with a sweep's points, for a non-zero exit status; None when every point
    that has a record was measured, or some ran out of memory beside measured ones (a sweep's finding, not a
    failure)."""
    names = {p.name for p in points}
    mine = [r for r in records if r.name in names]
    failed = [r.name for r in mine if "failed" in r.tags]
    if failed:
        listed = ", ".join(failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
        return (f"{len(failed)} of {len(points)} points failed ({listed}); each one's error is in its record's "
                f"notes and in the report")
    if mine and all("oom" in r.tags for r in mine):
        return (f"none of the {len(mine)} points ran: every one ran out of memory; sweep more GPUs, a smaller "
                f"preset or clip, or turn on activation checkpointing (--ac)")
    return None


RANK_PROCESS_GIB = 1.0
"""Host memory a CPU rank holds beyond its tensors (the interpreter, torch's libraries, allocator slack):
peak RSS less the tracked tensor peak was 0.7 to 0.9 GiB a rank in reports/cpu-small-2026-12-03."""


def host_memory_available() -> int | None:
    """Bytes this host can still give without swapping (MemAvailable), or None where /proc/meminfo is absent."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def point_host_bytes(point: Point) -> float:
    """Predicted host memory of a CPU point, all its ranks together: each rank's predicted peak (the model's
    most loaded rank, bench.perfmodel) plus ``RANK_PROCESS_GIB``."""
    from .perfmodel import Strategy, predict_training_memory

    dp, u, r = point.degrees
    st = Strategy(dp, u, r, point.ac, point.dtype, point.grad_accum, dp_replicate=point.dp_replicate)
    cfg = get_preset(point.preset).model
    peak = predict_training_memory(cfg, clip_layout(cfg, point.clip()), st, point.global_batch).memory_total
    return point.world * (peak + RANK_PROCESS_GIB * GIB)


def check_runnable_here(points: list[Point], ranks_on_this_host: bool = True) -> None:
    """Before any rank starts, refuse points that cannot run on this machine, with the fix: an attention
    backend it lacks (every rank would fail at its first attention) and, where this host runs every rank on
    CPU (``ranks_on_this_host``), points predicted to need more memory than it has (the kernel's OOM killer
    would take them, or the machine, down one by one)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for backend, dtype in sorted({(p.attention_backend, p.dtype) for p in points}):
        try:
            check_backend_runs_here(backend, device, dtype)
        except ValueError as e:
            hit = [p.name for p in points if (p.attention_backend, p.dtype) == (backend, dtype)]
            raise ValueError(f"{len(hit)} point(s) of this sweep cannot run here ({hit[0]}"
                             f"{', ...' if len(hit) > 1 else ''}): {e}") from None
    available = host_memory_available() if device == "cpu" and ranks_on_this_host else None
    if available is None:
        return
    over = [(p, need) for p in points if (need := point_host_bytes(p)) > available]
    if over:
        listed = "; ".join(f"{p.name} about {need / GIB:,.0f} GiB ({p.world} rank(s))" for p, need in over[:3])
        more = f"; and {len(over) - 3} more" if len(over) > 3 else ""
        raise ValueError(f"{len(over)} of the {len(points)} points need more memory than this CPU-only machine has "
                         f"available ({available / GIB:.1f} GiB; every rank runs here, each predicted to hold its "
                         f"tensors' peak plus {RANK_PROCESS_GIB:g} GiB): {listed}{more}. Use a smaller preset (tiny "
                         f"or small; e.g. --sweep s2vbench/bench/sweeps/cpu_smoke.toml), fewer ranks or a shorter "
                         f"clip, or run on GPUs")


def run_sweep(points: list[Point], results_path: str | Path, timeout_s: float = 1800.0, progress: bool = True
              ) -> ResultsLog:
    results_path = Path(results_path)
    for p in points:
        p.validate()
    check_runnable_here(points)
    log = ResultsLog(results_path)
    check_resume(log.records, points, results_path, log.environment)
    todo = [p for p in points if not log.done(p.name)]
    bar = None
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                       TimeElapsedColumn(), TimeRemainingColumn())
        bar.start()
        task = bar.add_task("sweep", total=len(points), completed=len(points) - len(todo))
    try:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else None
        for point in todo:
            if bar is not None:
                bar.update(task, description=f"{point.name} ({point.warmup}+{point.steps} steps)")
            if gpus is not None and point.world > gpus:  # NCCL refuses two ranks on one GPU
                log.append(failure_record(point, RuntimeError(
                    f"not run: {point.world} ranks need {point.world} GPUs (one a rank), and this machine has "
                    f"{gpus}; run the point where {point.world} are visible, or leave it out")))
                if bar is not None:
                    bar.advance(task)
                continue
            try:
                results = run_ranks(run_point_rank, point.world,
                                    {**point.to_dict(), "trace_dir": str(results_path.parent / "traces")},
                                    backend=default_backend(), timeout_s=timeout_s, threads_per_rank=1)
                log.append(point_record(point, results))
            except (RankFailed, TimeoutError) as e:
                log.append(failure_record(point, e))
            if bar is not None:
                bar.advance(task)
    finally:
        if bar is not None:
            bar.stop()
    return log


__all__ = ["RANK_PROCESS_GIB", "check_resume", "check_runnable_here", "failure_record", "gpu_power_metric",
           "host_memory_available", "point_host_bytes", "point_record", "run_sweep", "sweep_outcome"]
