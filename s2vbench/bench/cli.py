"""The ``s2vbench`` command."""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
from pathlib import Path

from ..model import cli as model_cli


def _default_out() -> Path:
    return Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def _run(args: argparse.Namespace) -> int:
    from .points import Point, default_cpu_points
    from .report import write_report
    from .sweep import run_sweep

    out = args.out or _default_out()
    cores = os.cpu_count() or 1
    points = default_cpu_points(cores, args.preset)
    if args.steps is not None:
        points = [Point(**{**p.__dict__, "steps": args.steps}) if not p.oversubscribed else p for p in points]
    log = run_sweep(points, out / "results.json", progress=not args.quiet)
    report = write_report([log.path], out, title=f"s2vbench run: {args.preset} preset on "
                                                 f"{log.environment.get('device', 'cpu')}")
    print(f"results: {log.path}\nreport:  {report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s2vbench", description="Wan-S2V scaling benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    p_model = sub.add_parser("model", help="parameter counts per group; a CPU forward for tiny/small")
    model_cli.add_arguments(p_model)
    p_run = sub.add_parser("run", help="the main job: iteration time, speed-up, memory and bytes at 1 and 2 ranks "
                                       "for single/fsdp/ulysses/ring (CPU, gloo), then the report")
    p_run.add_argument("--preset", default="small", help="model preset (default small)")
    p_run.add_argument("--steps", type=int, default=None, help="timed steps per point (default 3)")
    p_run.add_argument("--out", type=Path, default=None, help="output folder (default runs/<timestamp>); an "
                                                              "existing one is resumed")
    p_run.add_argument("--quiet", action="store_true", help="no progress bar")
    p_rep = sub.add_parser("report", help="markdown report with tables and plots from results files")
    p_rep.add_argument("results", nargs="+", type=Path)
    p_rep.add_argument("--out", type=Path, required=True, help="folder for report.md and its plots")
    p_rep.add_argument("--title", default=None)
    p_cmp = sub.add_parser("compare", help="regression check: flags medians outside the baseline's bootstrap CI; "
                                           "exits 1 on a regression")
    p_cmp.add_argument("baseline", type=Path)
    p_cmp.add_argument("new", type=Path)
    p_cmp.add_argument("--level", type=float, default=0.95, help="confidence level (default 0.95)")
    p_cmp.add_argument("--repeats", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p_gpu = sub.add_parser("gpu-run", help="kernel correctness and benchmarks for one GPU lease (tiny shapes on CPU)")
    p_gpu.add_argument("--out", type=Path, default=None, help="output folder (default runs/<timestamp>)")
    p_gpu.add_argument("--budget-min", type=float, default=18.0, help="wall-clock budget in minutes")
    p_gpu.add_argument("--smoke", action="store_true", help="tiny shapes even on a GPU")
    args = parser.parse_args(argv)
    if args.command == "model":
        return model_cli.run(args)
    if args.command == "run":
        return _run(args)
    if args.command == "compare":
        from .compare import run_compare

        return run_compare(args.baseline, args.new, args.level, args.repeats)
    if args.command == "report":
        from .report import write_report

        print(write_report(args.results, args.out, args.title))
        return 0
    from .gpu_run import gpu_run

    gpu_run(args.out or _default_out(), args.budget_min, smoke=True if args.smoke else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
