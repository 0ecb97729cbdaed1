"""The ``s2vbench`` command."""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

from ..model import cli as model_cli


def _default_out() -> Path:
    return Path("runs") / _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="s2vbench", description="Wan-S2V scaling benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    p_model = sub.add_parser("model", help="parameter counts per group; a CPU forward for tiny/small")
    model_cli.add_arguments(p_model)
    p_run = sub.add_parser("run", help="the main job (currently: a model smoke run on CPU)")
    p_run.add_argument("--out", type=Path, default=None, help="output folder (default runs/<timestamp>)")
    p_run.add_argument("--presets", default="tiny,small", help="comma-separated presets")
    p_run.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    p_run.add_argument("--steps", type=int, default=3, help="timed training steps per point")
    p_run.add_argument("--warmup", type=int, default=1, help="untimed warm-up steps per point")
    p_gpu = sub.add_parser("gpu-run", help="kernel correctness and benchmarks for one GPU lease (tiny shapes on CPU)")
    p_gpu.add_argument("--out", type=Path, default=None, help="output folder (default runs/<timestamp>)")
    p_gpu.add_argument("--budget-min", type=float, default=18.0, help="wall-clock budget in minutes")
    p_gpu.add_argument("--smoke", action="store_true", help="tiny shapes even on a GPU")
    args = parser.parse_args(argv)
    if args.command == "model":
        return model_cli.run(args)
    if args.command == "gpu-run":
        from .gpu_run import gpu_run

        gpu_run(args.out or _default_out(), args.budget_min, smoke=True if args.smoke else None)
        return 0
    from .smoke import run_smoke

    run_smoke(args.out or _default_out(), tuple(args.presets.split(",")), tuple(args.dtypes.split(",")),
              args.steps, args.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
