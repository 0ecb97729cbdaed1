"""The command-line entry points, run as a user would."""

import re
import subprocess
import sys

import pytest

from s2vbench.bench import cli
from s2vbench.model.cli import describe


@pytest.mark.parametrize("preset, total", [("tiny", "648,073"), ("small", None), ("14b", "16,295,755,609")])
def test_model_summary(preset, total):
    text = describe(preset)
    assert "casual_audio_encoder" in text and "blocks" in text
    if total:
        assert "total" in text and total in text
    if preset in ("tiny", "small"):
        assert "forward (CPU" in text and "finite=True" in text
    else:
        assert "forward skipped" in text
    if preset == "14b":
        assert "14,055,772,160" in text and "1,887,928,320" in text and "44,544" in text


def test_python_dash_m_model():
    out = subprocess.run([sys.executable, "-m", "s2vbench.model", "--preset", "tiny"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "648,073" in out.stdout and "output (1, 16, 4, 16, 16)" in out.stdout


def test_report_command(tmp_path, capsys):
    from s2vbench.bench.results import Metric, Record, ResultsLog

    log = ResultsLog(tmp_path / "r.json", environment={"device": "cpu"})
    for world, t in ((1, 2.0), (2, 1.25)):
        cfg = {"strategy": "single" if world == 1 else "ring", "world": world}
        log.append(Record("iteration", f"p{world}", cfg, [
            Metric("step_time", t, "s", "median", stats={"min": t, "max": t, "n": 1, "step0": t}),
            Metric("exposed_comm", 0.1, "s", "x", stats={"share": 0.08})]))
    assert cli.main(["report", str(log.path), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| ring"))
    assert "1.250" in row and "1.60" in row and "80%" in row  # step time, speed-up, efficiency
    assert (tmp_path / "rep" / "speedup.png").exists()


def test_an_error_is_one_message_not_a_traceback(tmp_path, capsys):
    missing = tmp_path / "nope.json"
    assert cli.main(["report", str(missing), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("s2vbench report: error: ") and str(missing) in err and "Traceback" not in err
    # --traceback shows where it came from
    from s2vbench.bench.results import ResultsError

    with pytest.raises(ResultsError, match="does not exist"):
        cli.main(["--traceback", "report", str(missing), "--out", str(tmp_path / "r")])


def _scaling_error(capsys, args):
    """Run ``s2vbench scaling ARGS``, which must fail as one message before launching anything."""
    assert cli.main(["scaling", *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("s2vbench scaling: error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize("env, args, match", [
    # each rank would make its own runs/<timestamp>, and rank 0 wait forever for the others' files
    ({"RANK": "0", "WORLD_SIZE": "2"}, ["--gpus", "2", "--strategies", "fsdp"],
     "inside a torchrun job every rank must write to the same folder: pass --out DIR"),
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, ["--gpus", "2", "--strategies", "fsdp"], "inside a slurm job"),
    ({"RANK": "5", "WORLD_SIZE": "2"}, ["--gpus", "2", "--out", "{tmp}/o"], "RANK=5 is not below WORLD_SIZE=2"),  # hung
    ({"RANK": "-1", "WORLD_SIZE": "2"}, ["--gpus", "2", "--out", "{tmp}/o"], "RANK='-1'"),  # exited 0
    ({"RANK": "0", "WORLD_SIZE": "3"}, ["--gpus", "1,2", "--strategies", "fsdp", "--out", "{tmp}/o"],
     r"this job has 3 ranks \(WORLD_SIZE=3\) but the sweep has no point at 3 GPUs"),
])
def test_scaling_in_a_job_checks_the_job_first(no_job, capsys, tmp_path, env, args, match):
    for var, value in env.items():
        no_job.setenv(var, value)
    err = _scaling_error(capsys, ["--preset", "tiny", *(a.format(tmp=tmp_path) for a in args)])
    assert re.search(match, err), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, match", [
    (["--gpus", "abc"], r"--gpus takes comma-separated positive integers \(e.g. 1,2,4\), got 'abc'"),
    (["--gpus", "1.5"], "--gpus takes comma-separated positive integers"),
    (["--gpus", "1,,2"], "--gpus takes comma-separated positive integers"),
    (["--gpus", "0"], "--gpus takes comma-separated positive integers"),  # divided by zero
    (["--strategies", "foo"], r"unknown strategies \['foo'\]; choose from single, fsdp, ulysses, ring, usp"),
    (["--gpus", "2", "--strategies", "fsdp", "--frames", "50"],
     r"no point of this sweep can run:\n  skipped .*frames must be a positive multiple of 4"),
    (["--gpus", "3", "--strategies", "ulysses"], r"no point of this sweep can run:\n  skipped .*Ulysses degree 3"),
    (["--gpus", "2", "--strategies", "fsdp", "--out", "{file}"], r"--out .*afile is a file, not a folder; pass a folder"),
    (["--gpus", "2", "--strategies", "fsdp", "--out", "{file}/sub"],
     r"--out .*afile/sub: cannot write there"),
    (["--points-json", "{points}"], r"--points-json .*points.json: not a list of sweep points"),
])
def test_scaling_input_mistakes_are_one_message(no_job, capsys, tmp_path, args, match):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "points.json").write_text('[{"preset": "tiny"}]')
    args = [a.format(file=tmp_path / "afile", points=tmp_path / "points.json") for a in args]
    err = _scaling_error(capsys, ["--preset", "tiny", "--out", str(tmp_path / "o"), *args])
    assert re.search(match, err), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, match", [
    (["--global-batch", "0"], "argument --global-batch: takes a positive integer, got '0'"),  # ran, exit 0
    (["--global-batch=-2"], "argument --global-batch: takes a positive integer"),
    (["--grad-accum", "0"], "argument --grad-accum: takes a positive integer"),
    (["--steps", "0"], "argument --steps: takes a positive integer"),
    (["--warmup=-1"], "argument --warmup: takes a whole number, 0 or more"),
    (["--frames", "0"], "argument --frames: takes a positive integer"),
    (["--nodes", "0", "--sbatch"], "argument --nodes: takes a positive integer"),
    (["--gpus-per-node=-1", "--sbatch"], "argument --gpus-per-node: takes a positive integer"),
    (["--cpus-per-task", "0", "--sbatch"], "argument --cpus-per-task: takes a positive integer"),
])
def test_scaling_counts_are_checked_by_the_parser(no_job, capsys, args, match):
    with pytest.raises(SystemExit) as e:
        cli.main(["scaling", "--preset", "tiny", "--gpus", "2", "--strategies", "fsdp", *args])
    assert e.value.code == 2 and match in capsys.readouterr().err


@pytest.mark.parametrize("args, match", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--strategies", "fsdp,ulyses"], r"unknown strategies \['ulyses'\]"),  # was dropped from the job unseen
    (["--tokens", "416", "--frames", "16"], "give either tokens or frames/height/width, not both"),
    (["--gpus", "1,2", "--nodes", "2", "--gpus-per-node", "8"],  # a 16-task job with nothing to run
     r"--nodes 2 x --gpus-per-node 8 is a 16-GPU job, but the sweep has points at 1, 2 GPUs only"),
    (["--sweep", "{sweep}"], r"bad.toml: \[sweep\] gpus must be a list of integers.*got \[2.0\]"),
    (["--time-limit", "2h"], r"SLURM time limit '2h': use \[days-\]hours:minutes:seconds"),
    (["--partition", "gpu; rm -rf ~"], r"SLURM partition 'gpu; rm -rf ~': use letters, digits"),
])
def test_sbatch_refuses_a_sweep_it_cannot_run(no_job, capsys, tmp_path, args, match):
    sweep = tmp_path / "bad.toml"
    sweep.write_text('[sweep]\npreset = "tiny"\ngpus = [2.0]\nstrategies = ["fsdp"]\n')
    args = [a.format(sweep=sweep) for a in args]
    err = _scaling_error(capsys, ["--preset", "tiny", "--gpus", "2", "--strategies", "fsdp", "--sbatch",
                                  "--gpus-per-node", "2", *args])
    assert re.search(match, err), err


def test_sbatch_gives_every_task_one_out_folder(no_job, capsys, tmp_path):
    base = ["scaling", "--preset", "tiny", "--gpus", "1,2", "--strategies", "fsdp,usp", "--sbatch", "--gpus-per-node",
            "2"]
    assert cli.main(base) == 0
    out, err = capsys.readouterr()
    srun = next(line for line in out.splitlines() if line.startswith("srun "))
    assert srun.endswith(' --out "runs/s2vbench-scaling-$SLURM_JOB_ID"')  # not each task's own timestamp
    script = tmp_path / "job.sbatch"
    script.write_text(out)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    # skipped points and the points of other sizes are said on stderr; stdout stays the script
    assert "skipped usp at 2 GPUs" in err and "only the 2-GPU points; those at 1 GPUs need jobs" in err
    assert cli.main([*base, "--out", "shared/run"]) == 0
    srun = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("srun "))
    assert srun.endswith("--out shared/run") and srun.count("--out") == 1


def test_sbatch_script_runs_this_python_from_where_it_was_rendered(no_job, capsys, tmp_path, monkeypatch):
    import shlex
    import sys

    work = tmp_path / "my repo"
    work.mkdir()
    monkeypatch.chdir(work)
    assert cli.main(["scaling", "--preset", "tiny", "--gpus", "2", "--strategies", "fsdp", "--sbatch",
                     "--gpus-per-node", "2", "--time-limit", "1-12:00:00", "--partition", "h100", "--account",
                     "proj-7", "--cpus-per-task", "16"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for line in ("#SBATCH --time=1-12:00:00", "#SBATCH --partition=h100", "#SBATCH --account=proj-7",
                 "#SBATCH --cpus-per-task=16", f"cd {shlex.quote(str(work))}"):
        assert line in lines, line
    srun = next(line for line in lines if line.startswith("srun "))
    assert shlex.split(srun)[2:5] == [sys.executable, "-m", "s2vbench"]  # no activated environment needed


@pytest.mark.parametrize("command", ["run", "gpu-run"])
@pytest.mark.parametrize("out, match", [("afile", r"--out .*afile is a file, not a folder; pass a folder"),
                                        ("afile/sub", r"--out .*afile/sub: cannot write there")])
def test_run_and_gpu_run_check_their_output_folder_before_measuring(monkeypatch, capsys, tmp_path, command, out,
                                                                    match):
    # both used to measure first (43 s for run's first point) and then fail at the first write with a bare errno
    from s2vbench.bench import gpu_run, sweep

    def measured(*args, **kwargs):
        raise AssertionError("measured before the output folder was checked")

    monkeypatch.setattr(sweep, "run_sweep", measured)
    monkeypatch.setattr(gpu_run, "gpu_run", measured)
    (tmp_path / "afile").write_text("x")
    assert cli.main([command, "--out", str(tmp_path / out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"s2vbench {command}: error: ") and re.search(match, err), err


@pytest.mark.parametrize("argv", [["model", "--preset", "tiny", "--no-forward"], ["buckets", "--no-measure"]])
@pytest.mark.parametrize("bad", ["99999999999999999999", "-1", "x"])
def test_a_seed_a_generator_cannot_take_is_refused_naming_the_flag(capsys, argv, bad):
    # torch said "Overflow when unpacking long long" beyond int64, numpy "expected non-negative integer" below 0
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, f"--seed={bad}"])
    assert e.value.code == 2 and "argument --seed: takes a whole number from 0 to 2**63 - 1" in capsys.readouterr().err


def test_the_largest_seed_runs():
    from s2vbench.model.cli import SEED_MAX, describe

    assert "finite=True" in describe("tiny", seed=SEED_MAX)


@pytest.mark.parametrize("budget", ["inf", "nan", "1e999"])
def test_gpu_run_refuses_a_budget_that_is_not_finite(capsys, budget):
    # inf was taken: on a GPU the model stage's timeout became infinite
    with pytest.raises(SystemExit) as e:
        cli.main(["gpu-run", "--budget-min", budget])
    assert e.value.code == 2
    assert f"--budget-min: takes a positive, finite number of minutes, got {budget!r}" in capsys.readouterr().err


def test_gpu_run_exits_1_when_nothing_was_measured(tmp_path, capsys):
    # it exited 0 after measuring nothing
    import torch

    if torch.cuda.is_available():
        pytest.skip("on a GPU the correctness stage measures before the budget is asked")
    assert cli.main(["gpu-run", "--out", str(tmp_path), "--budget-min", "1e-9"]) == 1
    out, err = capsys.readouterr()
    assert f"results: {tmp_path / 'results.json'}" in out  # written first
    assert err == ("s2vbench gpu-run: nothing was measured: the budget ran out before the first benchmark; give it "
                   "more --budget-min\n")


def test_gpu_run_exits_1_when_a_stage_failed(tmp_path, monkeypatch, capsys):
    from s2vbench.bench import gpu_run
    from s2vbench.bench.results import Metric, Record, ResultsLog

    def measured(out, budget_minutes, smoke=None):  # a conv that raised beside a measured one
        log = ResultsLog(out / "results.json", environment={"device": "cpu"})
        log.append(Record("causal_conv_kernel", "causal-conv/conv2/torch.float32", {},
                          [Metric("torch_time", 60.0, "us", "x"), Metric("triton_time", 12.0, "us", "x")]))
        log.append(Record("causal_conv_kernel", "causal-conv/conv3/torch.float32", {},
                          [Metric("torch_time", 60.0, "us", "x"),
                           Metric.failed("triton_time", "us", RuntimeError("out of resources"))]))
        return log.path

    monkeypatch.setattr(gpu_run, "gpu_run", measured)
    assert cli.main(["gpu-run", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("s2vbench gpu-run: 1 of 2 points failed (causal-conv/conv3/torch.float32); ") and \
        err.count("\n") == 1, err


@pytest.mark.parametrize("argv", [["report", "x.json", "--out"], ["predict", "--report"], ["run", "--out"],
                                  ["buckets", "--out"], ["longform", "--out"], ["gpu-run", "--out"],
                                  ["scaling", "--out"], ["calibrate", "--out"]])
@pytest.mark.parametrize("empty", ["", " "])
def test_an_empty_path_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch, capsys, argv, empty):
    # Path("") is ".": report and predict wrote report.md, predictions.* and their PNGs where they were run
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, empty])
    assert e.value.code == 2 and f"takes a path, got {empty!r}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
