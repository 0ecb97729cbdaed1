"""The ``s2vbench`` command."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import os
import sys
from pathlib import Path

from ..model import cli as model_cli
from ..model.cli import path_arg


def _default_out() -> Path:
    return Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


RUN_BUDGET_MIN = 7.0
"""Minutes `s2vbench run` aims to finish in, so that set-up and run stay under 10 minutes on a fresh 2-core
machine: calibration rounds after the first start only while they fit."""


def _run(args: argparse.Namespace) -> int:
    import time

    from .points import default_cpu_points
    from .report import write_report
    from .results import check_output_folder
    from .sweep import run_sweep, sweep_outcome

    deadline = time.monotonic() + 60 * args.budget_min
    args.out = out = check_output_folder(args.out or _default_out())  # now, not at the first point's write
    cores = os.cpu_count() or 1
    points = default_cpu_points(cores, args.preset)
    if args.steps is not None:
        points = [dataclasses.replace(p, steps=args.steps) if not p.oversubscribed else p for p in points]
    log = run_sweep(points, out / "results.json", progress=not args.quiet)
    title = f"s2vbench run: {args.preset} preset on {log.environment.get('device', 'cpu')}"
    report = write_report([log.path], out, title=title)  # the sweep's report, before the minutes of calibration
    if not args.no_calibration:
        from .calibrate import calibrate_and_validate

        # it saves its section in `out`, which write_report includes there, as a later `report --out` does
        calibrate_and_validate(out, [log.path], progress=not args.quiet, rounds=args.calibration_rounds,
                               deadline=deadline)
        report = write_report([log.path], out, title=title)
    print(f"results: {log.path}\nreport:  {report}")
    return _exit_status("run", sweep_outcome(log.records, points))


def _exit_status(command: str, problem: str | None) -> int:
    """1, after saying so, when a sweep's points failed (its results and report are written all the same):
    scripts and CI must not read a run in which nothing was measured as a success."""
    if problem is None:
        return 0
    print(f"s2vbench {command}: {problem}", file=sys.stderr)
    return 1


def _positive(convert, what: str):
    """An argparse type: ``convert`` the text and refuse anything not above 0, naming ``what`` it takes."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = 0
        if not value > 0:
            raise argparse.ArgumentTypeError(f"takes {what}, got {text!r}")
        return value
    return parse


positive_int = _positive(int, "a positive integer")


def _finite_float(text: str) -> float:
    """float(text), refusing inf and nan (a ValueError): an infinite budget makes every timeout infinite, so
    that a step that hangs on a GPU holds the lease until it ends."""
    value = float(text)
    if not abs(value) < float("inf"):
        raise ValueError(f"{text!r} is not finite")
    return value


_positive_minutes = _positive(_finite_float, "a positive, finite number of minutes")


def non_negative_int(text: str) -> int:
    """An argparse type for counts that may be 0 (warm-up steps, clips of an optional run)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"takes a whole number, 0 or more, got {text!r}")
    return value


def _positive_ints(text: str, flag: str) -> list[int]:
    """``20000,44544`` -> [20000, 44544]; anything else (an empty item too: "1,,2" is a typo, not [1, 2]) is a
    ValueError naming ``flag``."""
    try:
        values = [int(t) for t in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"{flag} takes comma-separated positive integers (e.g. 1,2,4), got {text!r}")
    return values


def _token_list(text: str | None) -> list[int | None]:
    """``--tokens 20000,44544`` -> [20000, 44544]; absent -> [None] (the clip of frames/height/width)."""
    return [None] if text is None else _positive_ints(text, "--tokens")


def _scaling(args: argparse.Namespace, argv: list[str]) -> int:
    from .cluster import detect_env, render_sbatch
    from .report import write_report
    from .results import read_results
    from .scaling import launch_sweep, load_sweep, run_in_job, sweep_points
    from .sweep import sweep_outcome

    env = None if args.sbatch else detect_env()
    if env is not None and args.out is None:  # each rank would pick its own runs/<timestamp>; rank 0 would wait
        raise ValueError(f"inside a {env.launcher} job every rank must write to the same folder: pass --out DIR "
                         f"(on storage all nodes share)")
    out = args.out or _default_out()
    name = "scaling"
    if args.points_json is not None:
        points, notes = _points_json(args.points_json), []
    elif args.sweep is not None:
        points, notes, name = load_sweep(args.sweep)
    else:
        points, notes = sweep_points(args.preset, _positive_ints(args.gpus, "--gpus"), args.strategies.split(","),
                                     global_batch=args.global_batch, scaling=args.scaling, steps=args.steps,
                                     warmup=args.warmup, ac=args.ac, dtype=args.dtype,
                                     attention_backend=args.attention_backend, frames=args.frames,
                                     height=args.height, width=args.width, trace=args.trace,
                                     grad_accum=args.grad_accum, inference=args.inference, compile=args.compile,
                                     tokens=_token_list(args.tokens), dp_replicate=_positive_ints(args.dp_replicate, "--dp-replicate"))
    if args.sbatch:
        # A job runs only the points of its size (run_in_job): none is an error, some a note. Notes go to
        # stderr, so that stdout stays the script.
        job = args.nodes * args.gpus_per_node
        sizes = sorted({p.world for p in points})
        if job not in sizes:
            raise ValueError(f"--nodes {args.nodes} x --gpus-per-node {args.gpus_per_node} is a {job}-GPU job, but "
                             f"the sweep has points at {', '.join(map(str, sizes))} GPUs only (a job runs the points "
                             f"of its size); choose --nodes and --gpus-per-node to make one of those")
        others = [w for w in sizes if w != job]
        for note in notes + ([f"note: this job runs only the {job}-GPU points; those at "
                              f"{', '.join(map(str, others))} GPUs need jobs of those sizes"] if others else []):
            print(note, file=sys.stderr)
        rest = [a for a in argv if a != "--sbatch"]
        command = [sys.executable, "-m", "s2vbench", *rest]
        print(render_sbatch(f"s2vbench-{name}", args.nodes, args.gpus_per_node, command, out_per_job=args.out is None,
                            time_limit=args.time_limit, partition=args.partition, account=args.account,
                            cpus_per_task=args.cpus_per_task, workdir=Path.cwd()))
        return 0
    args.out = out  # named, so that an interrupted sweep can say where it is
    if env is not None:
        run_in_job(points, out)
        if env.rank != 0 or args.points_json is not None:
            return 0
        log_path = out / "results.json"
        points = [p for p in points if p.world == env.world_size]  # the job's own
    else:
        for note in notes:
            print(note)
        log_path = launch_sweep(points, out).path
    print(write_report([log_path], out, title=f"s2vbench scaling: {name}"))
    return _exit_status("scaling", sweep_outcome(read_results(log_path), points))


def _points_json(path: Path) -> list:
    """The points ``launch_sweep`` wrote for its torchrun ranks (an internal option; checked all the same)."""
    import json

    from .points import Point

    try:
        points = [Point.from_dict(d) for d in json.loads(path.read_text())]
    except (json.JSONDecodeError, TypeError, AttributeError) as e:  # not JSON, not a list of points, a field missing
        raise ValueError(f"--points-json {path}: not a list of sweep points ({e})") from None
    for p in points:
        p.validate()
    return points


def main(argv: list[str] | None = None) -> int:
    from ..parallel.local_attention import BACKENDS
    from .calibrate import CALIBRATION_ROUNDS
    from .points import DTYPES

    parser = argparse.ArgumentParser(prog="s2vbench", description="Wan-S2V scaling benchmarks")
    parser.add_argument("--traceback", action="store_true",
                        help="on an error, show the Python traceback instead of the one-line message")
    sub = parser.add_subparsers(dest="command", required=True)
    p_model = sub.add_parser("model", help="parameter counts per group; a CPU forward for tiny/small")
    model_cli.add_arguments(p_model)
    p_run = sub.add_parser("run", help="the main job: iteration time, speed-up, memory and bytes at 1 and 2 ranks "
                                       "for single/fsdp/ulysses/ring (CPU, gloo), then the report")
    p_run.add_argument("--preset", default="small", help="model preset (default small)")
    p_run.add_argument("--steps", type=positive_int, default=None, help="timed steps per point (default 3)")
    p_run.add_argument("--out", type=path_arg, default=None, help="output folder (default runs/<timestamp>); an "
                                                              "existing one is resumed")
    p_run.add_argument("--quiet", action="store_true", help="no progress bar")
    p_run.add_argument("--no-calibration", action="store_true",
                       help="skip the performance model's calibration and validation (about 2 to 3 min)")
    p_run.add_argument("--calibration-rounds", type=positive_int, default=CALIBRATION_ROUNDS,
                       help=f"independent calibration rounds, each figure their median (default "
                            f"{CALIBRATION_ROUNDS}, 30 to 60 s each)")
    p_run.add_argument("--budget-min", type=_positive_minutes, default=RUN_BUDGET_MIN,
                       help=f"minutes the run aims to take (default {RUN_BUDGET_MIN}): the sweep, the validation "
                            f"points and one calibration round always run, further rounds only while they fit; "
                            f"the report says when rounds were cut")
    p_rep = sub.add_parser("report", help="markdown report with tables and plots from results files")
    p_rep.add_argument("results", nargs="+", type=path_arg)
    p_rep.add_argument("--out", type=path_arg, required=True, help="folder for report.md and its plots")
    p_rep.add_argument("--title", default=None)
    p_sc = sub.add_parser("scaling", help="sweep GPU counts and strategies: inside torchrun/SLURM, or launching "
                                          "torchrun per GPU count on this node")
    p_sc.add_argument("--preset", default="14b", help="model preset (default 14b)")
    p_sc.add_argument("--gpus", default="1,2,4,8", help="comma-separated GPU counts (default 1,2,4,8)")
    p_sc.add_argument("--strategies", default="fsdp,ulysses,ring,usp", help="comma-separated: " + ",".join(
        ("single", "fsdp", "ulysses", "ring", "usp")) + " (default fsdp,ulysses,ring,usp)")
    p_sc.add_argument("--global-batch", type=positive_int, default=8, help="clips per step (strong scaling keeps it; default 8)")
    p_sc.add_argument("--scaling", choices=("strong", "weak"), default="strong",
                      help="strong: --global-batch clips per step at every GPU count; weak: --global-batch clips per "
                           "data-parallel group, so the global batch grows with data parallelism (default strong)")
    p_sc.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per step on each rank (default 1)")
    p_sc.add_argument("--ac", action="store_true", help="activation checkpointing")
    p_sc.add_argument("--dtype", choices=DTYPES, default="bfloat16",
                      help="bfloat16: mixed precision over float32 master weights (default bfloat16)")
    p_sc.add_argument("--attention-backend", choices=BACKENDS, default="torch",
                      help="attention kernel (under context parallelism: the local, per-ring-step attention); "
                           "flash_attn needs the gpu extra (default torch)")
    p_sc.add_argument("--compile", action="store_true", help="torch.compile each block and audio injector (before "
                                                             "FSDP); warm-up absorbs it, its time is recorded")
    p_sc.add_argument("--tokens", default=None, help="comma-separated sequence-token counts instead of frames/height/"
                                                     "width: the preset's clip resized to each (within 5%%)")
    p_sc.add_argument("--frames", type=positive_int, default=None, help="video frames per clip (default: the preset's)")
    p_sc.add_argument("--height", type=positive_int, default=None, help="pixel height (default: the preset's)")
    p_sc.add_argument("--width", type=positive_int, default=None, help="pixel width (default: the preset's)")
    p_sc.add_argument("--dp-replicate", default="1",
                      help="comma-separated HSDP replica-group counts: each strategy runs on GPUs / dp_replicate "
                           "ranks, replicated across the groups (default 1: no replication)")
    p_sc.add_argument("--trace", action="store_true", help="a Chrome trace of one step of rank 0 per point")
    p_sc.add_argument("--inference", action="store_true", help="also time CFG denoising steps (2 forwards)")
    p_sc.add_argument("--steps", type=positive_int, default=3, help="timed steps per point (default 3)")
    p_sc.add_argument("--warmup", type=non_negative_int, default=1,
                      help="untimed warm-up steps per point, excluded from every figure (default 1)")
    p_sc.add_argument("--sweep", type=path_arg, default=None, help="a TOML sweep file (overrides the flags above)")
    p_sc.add_argument("--points-json", type=path_arg, default=None, help=argparse.SUPPRESS)
    p_sc.add_argument("--out", type=path_arg, default=None, help="output folder (default runs/<timestamp>)")
    p_sc.add_argument("--sbatch", action="store_true", help="print an sbatch script for this sweep and exit")
    p_sc.add_argument("--nodes", type=positive_int, default=1, help="with --sbatch: nodes (default 1)")
    p_sc.add_argument("--gpus-per-node", type=positive_int, default=8, help="with --sbatch: GPUs per node (default 8)")
    p_sc.add_argument("--cpus-per-task", type=positive_int, default=8, help="with --sbatch: CPU cores per GPU task "
                                                                           "(default 8)")
    p_sc.add_argument("--time-limit", default="02:00:00", help="with --sbatch: the job's time limit, "
                                                              "[days-]hours:minutes:seconds (default 02:00:00)")
    p_sc.add_argument("--partition", default=None, help="with --sbatch: the SLURM partition (default: the cluster's)")
    p_sc.add_argument("--account", default=None, help="with --sbatch: the SLURM account (default: yours)")
    p_cmp = sub.add_parser("compare", help="regression check: flags medians outside the baseline's bootstrap CI; "
                                           "exits 1 on a regression")
    p_cmp.add_argument("baseline", type=path_arg)
    p_cmp.add_argument("new", type=path_arg)
    p_cmp.add_argument("--level", type=float, default=0.95, help="confidence level (default 0.95)")
    p_cmp.add_argument("--repeats", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p_cmp.add_argument("--allow-missing", action="store_true",
                       help="let baseline points the new run lacks or left untimed pass (failures still fail)")
    from .gpu_run import DEFAULT_BUDGET_MIN as GPU_RUN_BUDGET_MIN  # no Triton at import: the kernels load lazily

    p_gpu = sub.add_parser("gpu-run", help="kernel correctness and benchmarks for one GPU lease (tiny shapes on CPU)")
    p_gpu.add_argument("--out", type=path_arg, default=None, help="output folder (default runs/<timestamp>)")
    p_gpu.add_argument("--budget-min", type=_positive_minutes, default=GPU_RUN_BUDGET_MIN,
                       help=f"wall-clock budget in minutes (default {GPU_RUN_BUDGET_MIN:g}: one device command of a "
                            f"15-minute lease)")
    p_gpu.add_argument("--smoke", action="store_true", help="tiny shapes even on a GPU")
    from . import buckets, calibrate, longform, plan

    p_plan = sub.add_parser("plan", help="validate a configuration; print mesh, shards, predicted memory and time")
    plan.add_plan_arguments(p_plan)
    p_pred = sub.add_parser("predict", help="predicted s/iteration and samples/s/GPU of the paper's claim")
    plan.add_predict_arguments(p_pred)
    p_cal = sub.add_parser("calibrate", help="measure a hardware profile for the performance model")
    calibrate.add_arguments(p_cal)
    p_buck = sub.add_parser("buckets", help="token-budget resolution bucketing benchmark")
    buckets.add_arguments(p_buck)
    p_long = sub.add_parser("longform", help="per-clip and cumulative cost of long videos: FramePack vs "
                                             "uncompressed motion windows")
    longform.add_arguments(p_long)
    args = parser.parse_args(argv)
    try:
        return _dispatch(args, argv)
    except _user_errors() as e:
        if args.traceback:
            raise
        print(f"s2vbench {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.traceback:
            raise
        print(f"s2vbench {args.command}: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130


def _resume_hint(args: argparse.Namespace) -> str:
    """How to go on after an interrupt, for the commands that write each result as it is finished."""
    if args.command in ("run", "scaling") and args.out is not None:
        return f"; what finished is saved in {args.out}, and the same command with --out {args.out} resumes it"
    if args.command == "calibrate":
        return "; its finished rounds are saved, and the same command resumes them"
    return ""


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a command raises for input or an environment it cannot use: bad values and files (ValueError and
    its kin: JSON, TOML, config, plan and profile errors), paths (OSError), a checkpoint, a calibration, a
    results file, a failed rank. Printed as one message; ``--traceback`` shows where it came from."""
    from ..model.checkpoint import CheckpointError
    from ..parallel.launch import RankFailed
    from .calibrate import CalibrationError
    from .results import ResultsError

    return ValueError, OSError, CheckpointError, CalibrationError, ResultsError, RankFailed


def _dispatch(args: argparse.Namespace, argv: list[str] | None) -> int:
    from . import buckets, calibrate, longform, plan

    handlers = {"plan": plan.run_plan, "predict": plan.run_predict, "calibrate": calibrate.run,
                "buckets": buckets.run, "longform": longform.run}
    if args.command in handlers:
        return handlers[args.command](args)
    if args.command == "model":
        return model_cli.run(args)
    if args.command == "run":
        return _run(args)
    if args.command == "scaling":
        return _scaling(args, argv if argv is not None else sys.argv[1:])
    if args.command == "compare":
        from .compare import run_compare

        return run_compare(args.baseline, args.new, args.level, args.repeats, args.allow_missing)
    if args.command == "report":
        from .report import write_report

        print(write_report(args.results, args.out, args.title))
        return 0
    from .gpu_run import gpu_run, gpu_run_outcome
    from .results import check_output_folder, read_results

    path = gpu_run(check_output_folder(args.out or _default_out()), args.budget_min,
                   smoke=True if args.smoke else None)
    return _exit_status("gpu-run", gpu_run_outcome(read_results(path)))


if __name__ == "__main__":
    sys.exit(main())
