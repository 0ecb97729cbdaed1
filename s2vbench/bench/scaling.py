"""``s2vbench scaling``: sweep GPU counts and strategies, under torchrun or SLURM, or launching torchrun.

Inside a job (``RANK``/``WORLD_SIZE`` from torchrun, or ``SLURM_PROCID``/``SLURM_NTASKS``) every rank runs the
points whose GPU count equals the job's world size, writes its measurements to ``<out>/ranks/``, and rank 0
assembles each point's record into ``<out>/results.json`` (so no collective is needed after a point, which
may have died of OOM). Outside a job it launches ``torch.distributed.run`` per GPU count and records a point
a launch died in as OOM or failed, then launches the rest again. A sweep can come from flags or a TOML file.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist

from ..model import get_preset
from ..parallel.launch import default_backend
from .cluster import detect_env, export_for_torch
from ..parallel.local_attention import BACKENDS
from .points import DTYPES, STRATEGIES, Point, clip_for_tokens
from .results import (ResultsLog, atomic_write_bytes, capture_environment, check_output_folder, has_type, is_int,
                      read_results)
from .sweep import check_resume, check_runnable_here, failure_record, point_record
from .worker import PointOOM, run_point_rank

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
    _check_sweep_wide(preset, gpus, strategies, global_batch, scaling, steps, warmup, lists)
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
    if not points:  # say why here: running on would only find that no results file was written
        raise ValueError("no point of this sweep can run:\n  " + "\n  ".join(notes))
    return points, notes


def _check_sweep_wide(preset: str, gpus: list, strategies: list, global_batch, scaling, steps, warmup,
                      lists: dict[str, list]) -> None:
    """What is wrong for every point is an error, not one skipped-point note per combination (and a
    misspelt strategy is not a combination that cannot run: it would be dropped from the sweep unseen)."""
    get_preset(preset)
    if not gpus or any(not is_int(g) or g < 1 for g in gpus):
        raise ValueError(f"GPU counts (gpus) must be one or more positive integers, got {gpus!r}")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if not strategies or unknown:
        what = f"unknown strategies {unknown}" if unknown else "no strategies"
        raise ValueError(f"{what}; choose from {', '.join(STRATEGIES)}")
    for what, value, low in (("global_batch", global_batch, 1), ("steps", steps, 1), ("warmup", warmup, 0)):
        if not is_int(value) or value < low:
            raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")
    if scaling not in ("strong", "weak"):
        raise ValueError(f"scaling must be 'strong' or 'weak', got {scaling!r}")
    for axis, values in lists.items():
        if not values:
            raise ValueError(f"sweep axis {axis} is an empty list; give it at least one value or leave it out")
    for axis, known in (("dtype", DTYPES), ("attention_backend", BACKENDS)):
        unknown = [v for v in lists.get(axis, []) if v not in known]
        if unknown:  # each would be a point "that cannot run", skipped with a note, not the typo it is
            raise ValueError(f"unknown {axis} {unknown}; choose from {', '.join(known)}")
    if any(t is not None for t in lists.get("tokens", [])) and \
            any(v is not None for k in ("frames", "height", "width") for v in lists.get(k, [])):
        raise ValueError("give either tokens or frames/height/width, not both: a token count sets the clip's "
                         "geometry itself")


def _hsdp(extra: dict) -> str:
    rep = extra.get("dp_replicate", 1)
    return f" with dp_replicate {rep}" if rep != 1 else ""


_SWEEP_FIELDS = {"name": str, "description": str, "preset": str, "scaling": str, "global_batch": int, "steps": int,
                 "warmup": int}
"""Scalar fields of a sweep file, and their TOML types."""
_SWEEP_LISTS = {"gpus": int, "strategies": str}
_AXIS_TYPES = {"ac": bool, "trace": bool, "inference": bool, "compile": bool, "dtype": str, "attention_backend": str,
               "frames": int, "height": int, "width": int, "tokens": int, "grad_accum": int, "dp_replicate": int}
"""Each axis: one value or a list of them, of this type."""
_TYPE_NAMES = {int: ("an integer", "integers"), str: ("a string", "strings"), bool: ("true or false", "booleans")}
_EXAMPLES = {"name": '"paper-8gpu"', "description": '"..."', "preset": '"14b"', "scaling": '"strong"',
             "global_batch": "8", "steps": "5", "warmup": "2", "gpus": "[1, 2, 4, 8]",
             "strategies": '["fsdp", "ulysses"]', "ac": "[false, true]", "trace": "false", "inference": "false",
             "compile": "false", "dtype": '["bfloat16"]', "attention_backend": '"triton"', "frames": "48",
             "height": "768", "width": "1024", "tokens": "[20000, 44544]", "grad_accum": "1", "dp_replicate": "[1, 2]"}


def _check_sweep_types(path: Path, s: dict) -> None:
    """TOML values of the wrong type fail deep in the sweep (or, as "false", read as true): name the field."""
    for key, value in s.items():
        if key in _SWEEP_FIELDS:
            kind, listed = _SWEEP_FIELDS[key], False
        elif key in _SWEEP_LISTS:
            kind, listed = _SWEEP_LISTS[key], True
        elif key in _AXIS_TYPES:
            kind, listed = _AXIS_TYPES[key], isinstance(value, list)
        else:
            known = sorted({*_SWEEP_FIELDS, *_SWEEP_LISTS, *_AXIS_TYPES})
            raise ValueError(f"{path}: unknown [sweep] field {key!r}; known: {', '.join(known)}")
        single, plural = _TYPE_NAMES[kind]
        if listed and not (isinstance(value, list) and all(has_type(v, kind) for v in value)):
            raise ValueError(f"{path}: [sweep] {key} must be a list of {plural}, e.g. {key} = {_EXAMPLES[key]}; "
                             f"got {value!r}")
        if not listed and not has_type(value, kind):
            axis = f" or a list of {plural} (an axis)" if key in _AXIS_TYPES else ""
            raise ValueError(f"{path}: [sweep] {key} must be {single}{axis}, e.g. {key} = {_EXAMPLES[key]}; got "
                             f"{value!r}")


def load_sweep(path: Path) -> tuple[list[Point], list[str], str]:
    """Points, notes and name of a TOML sweep (a ``[sweep]`` table; list-valued axes are crossed)."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"sweep file {path}: cannot read it ({e.strerror or e}); pass a TOML file such as "
                         f"s2vbench/bench/sweeps/cpu_smoke.toml") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None
    if "sweep" not in doc:
        raise ValueError(f"{path}: a sweep file needs a [sweep] table")
    if not isinstance(doc["sweep"], dict):
        raise ValueError(f"{path}: 'sweep' must be a [sweep] table, got {doc['sweep']!r}")
    s = dict(doc["sweep"])
    _check_sweep_types(path, s)
    name = s.pop("name", Path(path).stem)
    s.pop("description", None)
    for key in ("preset", "gpus", "strategies"):
        if key not in s:
            raise ValueError(f"{path}: [sweep] needs '{key}'")
    try:
        points, notes = sweep_points(s.pop("preset"), s.pop("gpus"), s.pop("strategies"), **s)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return points, notes, name


def _rank_file(out: Path, point: Point, rank: int) -> Path:
    return out / "ranks" / point.name.replace("/", "__") / f"rank{rank}.pt"


def _failure_file(out: Path, point: Point, rank: int) -> Path:
    return _rank_file(out, point, rank).with_suffix(".failed.txt")


def _died_in(out: Path, points: list[Point]) -> dict[str, list[Path]]:
    """Points an earlier job died in, with the failing ranks' traceback files: a job cannot go on past a
    failure that only some ranks saw (the others wait in a collective), so it leaves these behind and dies."""
    found = {}
    for p in points:
        folder = _rank_file(out, p, 0).parent
        files = sorted(folder.glob("rank*.failed.txt")) if folder.is_dir() else []
        if files:
            found[p.name] = files
    return found


def _record_deaths(log: ResultsLog, out: Path, points: list[Point]) -> int:
    """Record the points of ``points`` an earlier job died in; returns how many were new."""
    new = 0
    for name, files in _died_in(out, points).items():
        point = next(p for p in points if p.name == name)
        if not log.done(name):
            text = "\n".join(f"{f.name.split('.')[0]}: {f.read_text()[-2000:]}" for f in files)
            log.append(failure_record(point, RuntimeError(f"the job died in this point: {text}")))
            new += 1
        # The record now says it (written first: a rank reading tracebacks, then records, sees one or the
        # other); a user who removes the record runs the point again.
        for f in files:
            f.replace(f.with_name(f.name.replace(".failed.txt", ".failed.recorded.txt")))
    return new


def run_in_job(points: list[Point], out: Path, timeout_s: float = 900.0) -> None:
    """Run this job's points (world size = the job's) on this rank; rank 0 records them.

    An out-of-memory error, which every rank learns of together (``worker.PointOOM``), is recorded and the job
    goes on. Any other failure leaves ``ranks/<point>/rank<r>.failed.txt`` and ends the job (its peers may be
    stuck in a collective); the next job over the same ``--out`` records that point as failed and goes on."""
    env = detect_env()
    if env is None:
        raise RuntimeError("run_in_job needs a torchrun or SLURM environment (RANK/WORLD_SIZE or SLURM_PROCID)")
    mine = [p for p in points if p.world == env.world_size]
    size = "WORLD_SIZE" if env.launcher == "torchrun" else "SLURM_NTASKS"
    if not mine:  # every rank would return at once, having measured nothing
        raise ValueError(f"this job has {env.world_size} ranks ({size}={env.world_size}) but the sweep has no point "
                         f"at {env.world_size} GPUs (its GPU counts: {sorted({p.world for p in points})}); run it "
                         f"in a job of one of those sizes, or sweep --gpus {env.world_size}")
    if env.master_port + len(mine) > 65535:  # each point's process group takes the next port
        raise ValueError(f"MASTER_PORT={env.master_port} leaves no room for the {len(mine)} ports of this job's "
                         f"points above it; use a port below {65535 - len(mine)}")
    check_output_folder(out)  # before any rank starts, not at the first point's write
    check_runnable_here(mine, ranks_on_this_host=False)  # the job's own allocation holds its memory
    export_for_torch(env)
    backend = default_backend()
    results_path = out / "results.json"
    # Every rank reads what is finished, or was died in, before any point runs (rank 0 writes only once all
    # ranks have joined a point), so all skip the same points: a rank that ran a point rank 0 skipped would
    # wait for it forever.
    finished = set(_died_in(out, mine))
    recorded = read_results(results_path) if results_path.exists() else []
    # every rank raises alike, before any point; the machine is not compared, since ranks on several nodes
    # could not agree on one without a collective
    check_resume(recorded, mine, results_path, None)
    finished |= {r.name for r in recorded}
    log = ResultsLog(results_path) if env.rank == 0 else None
    if log is not None:
        _record_deaths(log, out, mine)
        for point in mine:  # an earlier job's rank files of a point to run would pass for this job's
            if point.name not in finished:
                for r in range(env.world_size):
                    _rank_file(out, point, r).unlink(missing_ok=True)
    for i, point in enumerate(mine):
        if point.name in finished:
            continue
        # A fresh process group per point (the worker ends each point on a no-op group for compute-only
        # timing), on a fresh port whose store rank 0 serves itself, not torchrun's agent.
        os.environ["MASTER_PORT"] = str(env.master_port + 1 + i)
        os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)
        dist.init_process_group(backend, timeout=_dt.timedelta(seconds=timeout_s))
        try:
            result = run_point_rank(env.rank, env.world_size, {**point.to_dict(), "trace_dir": str(out / "traces")})
            buf = io.BytesIO()
            torch.save(result, buf)
            atomic_write_bytes(_rank_file(out, point, env.rank), buf.getvalue())
        except PointOOM as e:  # all ranks raised it at the same step: record the point and go on together
            if log is not None:
                log.append(failure_record(point, e))
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        except Exception:  # not KeyboardInterrupt: an interrupted point is run again on resume, not recorded
            atomic_write_bytes(_failure_file(out, point, env.rank), traceback.format_exc().encode())
            raise
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
        if log is not None:
            files = [_rank_file(out, point, r) for r in range(env.world_size)]
            deadline = time.monotonic() + timeout_s
            while not all(f.exists() for f in files):
                died = [r for r in range(env.world_size) if _failure_file(out, point, r).exists()]
                if died:  # do not wait out the timeout for ranks that will never report
                    raise RuntimeError(f"{point.name}: ranks {died} failed (tracebacks in {files[0].parent})")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{point.name}: ranks did not report within {timeout_s:.0f} s")
                time.sleep(0.2)
            results = [torch.load(f, weights_only=False) for f in files]
            log.append(point_record(point, results))


TORCHRUN_GRACE_S = 60.0
"""How long a timed-out torchrun gets to stop its ranks after SIGTERM before it is killed."""


def _torchrun(world: int, spec: Path, out: Path, timeout_s: float) -> tuple[int | None, str]:
    """One ``torch.distributed.run`` of this node's ``world``-rank points: (exit code, or None when it timed
    out and was killed with all its ranks; the tail of its stderr)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           "-m", "s2vbench", "scaling", "--points-json", str(spec), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout_s)
        return proc.returncode, err[-3000:]
    except subprocess.TimeoutExpired:
        return None, _stop(proc)[-3000:]
    except KeyboardInterrupt:  # in a session of its own, torchrun did not get the terminal's Ctrl-C
        _stop(proc)
        raise


def _stop(proc: subprocess.Popen) -> str:
    """Stop a torchrun and its ranks; returns what it still wrote to stderr. Its ranks run in sessions of their
    own, out of reach of a signal to its group: SIGTERM makes torchrun stop them itself; SIGKILL only after a
    grace period (or a Ctrl-C), and whatever still holds the pipes then is left behind rather than waited for."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=TORCHRUN_GRACE_S)
        return err or ""
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return ""


def launch_sweep(points: list[Point], out: Path, timeout_s: float = 3600.0) -> ResultsLog:
    """Outside a job: ``torch.distributed.run`` per GPU count, on this node, until each point has a record.

    A launch that dies in a point (a rank killed, say) leaves it to the next launch to skip: the point it died
    in is recorded as OOM or failed, and the rest of that GPU count's points are launched again."""
    gpus_per_node = torch.cuda.device_count() or None
    if gpus_per_node is not None and all(p.world > gpus_per_node for p in points):  # nothing would run
        raise ValueError(f"this node has {gpus_per_node} GPUs and every point needs more "
                         f"({sorted({p.world for p in points})}); run the sweep in a SLURM job (--sbatch) or sweep "
                         f"--gpus up to {gpus_per_node}")
    check_output_folder(out)  # before any rank starts, not at the first point's write
    check_runnable_here(points, ranks_on_this_host=True)
    recorded = out / "results.json"
    check_resume(read_results(recorded) if recorded.exists() else [], points, recorded, capture_environment())
    spec = out / "sweep.json"
    spec.write_text(json.dumps([p.to_dict() for p in points]))
    for world in sorted({p.world for p in points}):
        if gpus_per_node is not None and world > gpus_per_node:
            print(f"skipping {world}-GPU points: this node has {gpus_per_node} GPUs; run the sbatch template")
            continue
        log = ResultsLog(out / "results.json")
        pending = [p for p in points if p.world == world and not log.done(p.name)]
        while pending:
            code, err = _torchrun(world, spec, out, timeout_s)
            log = ResultsLog(out / "results.json")
            # A launch that died without leaving a traceback (a rank killed) died in the first point still
            # without a record: points run in order. Either way every launch makes progress.
            left = [p for p in pending if not log.done(p.name)]
            if left and not _record_deaths(log, out, left):
                why = (f"torchrun timed out after {timeout_s:.0f} s and was killed" if code is None
                       else f"torchrun exited with code {code}")
                log.append(failure_record(left[0], RuntimeError(f"{why}: {err}")))
            pending = [p for p in left if not log.done(p.name)]
    return ResultsLog(out / "results.json")


__all__ = ["AXES", "launch_sweep", "load_sweep", "run_in_job", "sweep_points"]
