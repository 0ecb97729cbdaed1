"""Run sweep points, each in its own process group, and write one record per point as soon as it exists.

A point whose rank is killed (SIGKILL, the kernel's oom-killer) or raises an out-of-memory error is recorded
as OOM and the sweep goes on; any other failure is recorded as failed with its traceback. A re-run resumes:
points already in the results file are skipped.
"""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import torch

from ..model import clip_layout, get_preset
from ..parallel.launch import RankFailed, default_backend, run_ranks
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


def failure_record(point: Point, error: BaseException) -> Record:
    text = str(error)
    # a SIGKILL (the kernel's oom-killer), CUDA's or our own OOM, or the CPU allocator refusing (no overcommit)
    oom = bool(re.search(r"exit(ed with )?code\s*:?\s*-9|OutOfMemoryError|out of memory|PointOOM|"
                         r"can't allocate memory", text, re.IGNORECASE))
    status = "oom" if oom else "failed"
    return Record("iteration", point.name, point.to_dict(),
                  [Metric("step_time", None, "s", f"{status}: {text[-500:]}", status="not_measured")],
                  tags=[status], notes=text[-4000:])


def run_sweep(points: list[Point], results_path: str | Path, timeout_s: float = 1800.0, progress: bool = True
              ) -> ResultsLog:
    results_path = Path(results_path)
    for p in points:
        p.validate()
    log = ResultsLog(results_path)
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


__all__ = ["failure_record", "gpu_power_metric", "point_record", "run_sweep"]
