"""``s2vbench scaling``: sweep GPU counts and strategies, under torchrun or SLURM, or launching torchrun.

Inside a job (``RANK``/``WORLD_SIZE`` from torchrun, or ``SLURM_PROCID``/``SLURM_NTASKS``) every rank runs the
points whose GPU count equals the job's world size, writes its measurements to ``<out>/ranks/``, and rank 0
assembles each point's record into ``<out>/results.json`` (so no collective is needed after a point, which
may have died of OOM). Outside a job it launches ``torch.distributed.run`` once per GPU count and records a
point whose launch failed as OOM or failed. A sweep can come from flags or a TOML file.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from .cluster import detect_env, export_for_torch
from .points import Point, clip_for_tokens
from .results import ResultsLog
from .sweep import failure_record, point_record
from .worker import run_point_rank

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

AXES = ("ac", "dtype", "attention_backend", "frames", "height", "width", "trace", "grad_accum", "inference", "compile",
        "tokens", "dp_replicate")
"""Point fields a sweep file may give as lists (their cartesian product is swept)."""


def sweep_points(preset: str, gpus: list[int], strategies: list[str], global_batch: int = 8, scaling: str = "strong",
                 steps: int = 3, warmup: int = 1, **axes) -> tuple[list[Point], list[str]]:
    """Points of a sweep, and notes on the combinations that cannot run (e.g. usp on a prime GPU count)."""
    lists = {k: (v if isinstance(v, list) else [v]) for k, v in axes.items() if k in AXES}
    unknown = set(axes) - set(AXES)
    if unknown:
        raise ValueError(f"unknown sweep axes {sorted(unknown)}; known: {AXES}")
    for tokens in lists.get("tokens", []):  # an unreachable token count is an error, not a skipped combination
        if tokens is not None:
            clip_for_tokens(preset, tokens)
    points, notes = [], []
    combos = [dict(zip(lists, values)) for values in itertools.product(*lists.values())] if lists else [{}]
    for world, strategy, extra in itertools.product(gpus, strategies, combos):
        try:
            dp = Point(preset, world, strategy, dp_replicate=extra.get("dp_replicate", 1)).dp
        except ValueError as e:
            notes.append(f"skipped {strategy} at {world} GPUs{_hsdp(extra)}: {e}")
            continue
        batch = global_batch * dp if scaling == "weak" else global_batch
        p = Point(preset, world, strategy, global_batch=batch, scaling=scaling, steps=steps, warmup=warmup, **extra)
        try:
            p.validate()
        except ValueError as e:
            notes.append(f"skipped {p.name}: {e}")
            continue
        same = next((q for q in points if q.degrees == p.degrees and dataclasses.replace(q, strategy=p.strategy) == p),
                    None)
        if same is not None:  # e.g. ulysses and ring on one rank per replica group
            notes.append(f"skipped {p.name}: the same ranks and degrees as {same.name}")
            continue
        points.append(p)
    return points, notes


def _hsdp(extra: dict) -> str:
    rep = extra.get("dp_replicate", 1)
    return f" with dp_replicate {rep}" if rep != 1 else ""


def load_sweep(path: Path) -> tuple[list[Point], list[str], str]:
    """Points, notes and name of a TOML sweep (a ``[sweep]`` table; list-valued axes are crossed)."""
    doc = tomllib.loads(Path(path).read_text())
    if "sweep" not in doc:
        raise ValueError(f"{path}: a sweep file needs a [sweep] table")
    s = dict(doc["sweep"])
    name = s.pop("name", Path(path).stem)
    s.pop("description", None)
    for key in ("preset", "gpus", "strategies"):
        if key not in s:
            raise ValueError(f"{path}: [sweep] needs '{key}'")
    points, notes = sweep_points(s.pop("preset"), list(s.pop("gpus")), list(s.pop("strategies")), **s)
    return points, notes, name


def _rank_file(out: Path, point: Point, rank: int) -> Path:
    return out / "ranks" / point.name.replace("/", "__") / f"rank{rank}.pt"


def run_in_job(points: list[Point], out: Path, timeout_s: float = 900.0) -> None:
    """Run this job's points (world size = the job's) on this rank; rank 0 records them."""
    env = detect_env()
    if env is None:
        raise RuntimeError("run_in_job needs a torchrun or SLURM environment (RANK/WORLD_SIZE or SLURM_PROCID)")
    export_for_torch(env)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    mine = [p for p in points if p.world == env.world_size]
    log = ResultsLog(out / "results.json") if env.rank == 0 else None
    for i, point in enumerate(mine):
        if log is not None and log.done(point.name):
            continue
        # A fresh process group per point (the worker ends each point on a no-op group for compute-only
        # timing), on a fresh port whose store rank 0 serves itself, not torchrun's agent.
        os.environ["MASTER_PORT"] = str(env.master_port + 1 + i)
        os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)
        dist.init_process_group(backend, timeout=_dt.timedelta(seconds=timeout_s))
        try:
            result = run_point_rank(env.rank, env.world_size, {**point.to_dict(), "trace_dir": str(out / "traces")})
            path = _rank_file(out, point, env.rank)
            path.parent.mkdir(parents=True, exist_ok=True)
            buf = io.BytesIO()
            torch.save(result, buf)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(buf.getvalue())
            tmp.replace(path)
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        if log is not None:
            files = [_rank_file(out, point, r) for r in range(env.world_size)]
            deadline = time.monotonic() + timeout_s
            while not all(f.exists() for f in files):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{point.name}: ranks did not report within {timeout_s:.0f} s")
                time.sleep(0.2)
            results = [torch.load(f, weights_only=False) for f in files]
            log.append(point_record(point, results))


def launch_sweep(points: list[Point], out: Path, timeout_s: float = 3600.0) -> ResultsLog:
    """Outside a job: one ``torch.distributed.run`` per GPU count, on this node."""
    out.mkdir(parents=True, exist_ok=True)
    spec = out / "sweep.json"
    spec.write_text(json.dumps([p.to_dict() for p in points]))
    gpus_per_node = torch.cuda.device_count() or None
    for world in sorted({p.world for p in points}):
        if gpus_per_node is not None and world > gpus_per_node:
            print(f"skipping {world}-GPU points: this node has {gpus_per_node} GPUs; run the sbatch template")
            continue
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
               "-m", "s2vbench", "scaling", "--points-json", str(spec), "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        log = ResultsLog(out / "results.json")
        for p in points:
            if p.world == world and not log.done(p.name):
                reason = f"torchrun exited with code {proc.returncode}: {proc.stderr[-3000:]}"
                log.append(failure_record(p, RuntimeError(reason)))
    return ResultsLog(out / "results.json")


__all__ = ["AXES", "launch_sweep", "load_sweep", "run_in_job", "sweep_points"]
