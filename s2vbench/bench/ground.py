"""Ground the 8-GPU claim on one GPU: run rank 0's share of an 8-rank job for real.

One process joins torch's "fake" process group as rank 0 of ``world`` ranks: every collective returns at
once with buffers of the right shapes, so the process does exactly the compute (and holds exactly the
memory) of one rank of the real job. At the paper's per-rank shapes (Ulysses 8: the 44,544-token sequence
with 5 of the 40 heads in attention, 5,568 tokens elsewhere; ring 8: blocks of 5,568 tokens) and the 14b
width at reduced depth, that measures compute; only communication is left to the model. The 40-layer
figure scales the measured time by the model's ratio of 40-layer to reduced-depth compute and adds the
model's exposed communication; it is marked ``predicted`` (grounded), never ``measured``.
"""

from __future__ import annotations

from typing import Callable

import torch

from .points import Point
from .results import Metric, Record


def ground_points(world: int = 8, on_gpu: bool = True) -> list[Point]:
    """The per-rank shapes of the paper's 8-GPU run (on GPU), or tiny stand-ins (on CPU)."""
    if on_gpu:
        return [Point("14b-2layer", world, s, global_batch=1, ac=True, dtype="bfloat16", steps=3, warmup=1)
                for s in ("ulysses", "ring")]
    return [Point("tiny", world, s, global_batch=1, steps=2, warmup=1) for s in ("ulysses", "ring")]


def ground_rank(rank: int, _world: int, point_dict: dict) -> dict:
    """Called by ``run_ranks(ground_rank, 1, ...)``: leave the 1-rank gloo group, join a fake group of the
    point's world size as rank 0, and run the point's steps."""
    from ..parallel.launch import join_fake_group
    from .worker import _device, _run_steps

    point = Point.from_dict(point_dict)
    join_fake_group(point.world)
    device = _device()
    out = _run_steps(point, device, timed=True, count=False)
    out["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return out


def ground_record(point: Point, result: dict, hw_name: str | None = None) -> Record:
    """Measured rank-0 compute next to the model's, and the grounded full-depth estimate, on ``hw_name``'s
    profile (default: the shipped profile of the device that ran it). A device no shipped profile describes
    (a CPU, an H100 PCIe, a B200, ...) gets its measurement alone: the model's figures would be another
    device's, and a grounded estimate from them would pass for this one's."""
    import statistics

    from ..model.config import get_preset
    from ..model.sequence import clip_layout
    from .perfmodel import Strategy, predict_training
    from .profiles import load_profile, profile_for_device, shipped_profiles

    device = result.get("device_name")
    how = f"rank 0 of {point.world} under torch's fake process group (collectives are no-ops), median of " \
          f"{len(result['times'])} timed steps, warm-up excluded; attention: the {point.attention_backend!r} " \
          f"backend{' (aten flash attention on CUDA)' if point.attention_backend == 'torch' else ''}"
    measured = statistics.median(result["times"])
    metrics = [Metric("rank0_compute_time", measured, "s", how,
                      stats={f"step{i}": t for i, t in enumerate(result["times"])})]
    predicted = ("model_compute_time", "grounded_14b_step_time", "model_14b_step_time")
    profile = hw_name or profile_for_device(device)
    if profile is None:
        why = (f"no shipped hardware profile describes {device} (shipped: {', '.join(shipped_profiles())}, the SXM "
               f"parts of their datasheets), so the model has no figures for it")
        metrics += [Metric(name, None, "s", why, status="not_measured") for name in predicted]
    else:
        hw = load_profile(profile)
        profile = hw.name  # a profile file's own name, as the metrics give it
        dp, u, r = point.degrees
        st = Strategy(dp, u, r, point.ac, point.dtype, dp_replicate=point.dp_replicate)
        small_cfg = get_preset(point.preset).model
        lay = clip_layout(small_cfg, point.clip())
        reduced = predict_training(small_cfg, lay, st, hw, point.global_batch)
        full = predict_training(get_preset("14b").model, lay, st, hw, point.global_batch)
        scale = (full.compute + full.other) / (reduced.compute + reduced.other)
        metrics += [Metric("model_compute_time", reduced.compute + reduced.other, "s",
                           f"perfmodel on {hw.name}, the same reduced-depth shapes, communication left out",
                           "predicted"),
                    Metric("grounded_14b_step_time", measured * scale + full.exposed_comm, "s",
                           f"measured x {scale:.1f} (model's 40-layer / reduced compute) + modelled exposed "
                           f"communication {full.exposed_comm:.3f} s ({hw.name})", "predicted"),
                    Metric("model_14b_step_time", full.time, "s", f"perfmodel alone on {hw.name}", "predicted")]
    if result.get("peak_allocated") is not None:
        metrics.append(Metric("peak_allocated", result["peak_allocated"] / 2 ** 30, "GiB",
                              "torch.cuda.max_memory_allocated, rank 0's share"))
    else:
        metrics.append(Metric("peak_allocated", None, "GiB", "no CUDA device", status="not_measured"))
    return Record("ground", f"ground/{point.name}", {**point.to_dict(), "hardware_profile": profile}, metrics,
                  tags=["fake_pg"], notes=f"device {device}")


RUN_RANKS_SLACK_S = 45.0
"""What ``run_ranks`` may take beyond its timeout: the collectives' timeout fires first, then it waits 30 s
more and joins the processes."""


def run_ground(points: list[Point], log, timeout_s: float = 600.0, left_s: Callable[[], float] | None = None,
               need_s: float = 60.0) -> None:
    """Each point in its own process (its own fake group), recorded as it finishes. With ``left_s`` (the
    seconds a lease has left, asked again before each point), a point starts only with more than ``need_s``
    left and is stopped within what is left; one not started is run by a resume."""
    from ..parallel.launch import RankFailed, run_ranks
    from .sweep import failure_record

    todo = [p for p in points if not log.done(f"ground/{p.name}")]
    for i, point in enumerate(todo):
        name = f"ground/{point.name}"
        limit = timeout_s
        if left_s is not None:
            if left_s() <= need_s:
                continue
            later = need_s * (len(todo) - 1 - i)  # a slow point leaves the points after it theirs
            limit = min(timeout_s, max(need_s, left_s() - RUN_RANKS_SLACK_S - later))
        try:
            result = run_ranks(ground_rank, 1, point.to_dict(), timeout_s=limit)[0]
            log.append(ground_record(point, result))
        except (RankFailed, TimeoutError) as e:
            rec = failure_record(point, e)
            rec.kind, rec.name = "ground", name  # a grounding point, not a sweep's iteration
            log.append(rec)


__all__ = ["ground_points", "ground_rank", "ground_record", "run_ground"]
