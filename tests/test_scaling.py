"""Scaling sweeps: SLURM/torchrun environments, nodelists, the sbatch template, TOML sweeps, torchrun end to end."""

import subprocess
import sys
from pathlib import Path

import pytest

from s2vbench.bench.cluster import detect_env, parse_nodelist, render_sbatch
from s2vbench.bench.results import read_results
from s2vbench.bench.scaling import load_sweep, sweep_points

SWEEPS = Path(__file__).resolve().parents[1] / "s2vbench" / "bench" / "sweeps"


def test_nodelists():
    assert parse_nodelist("gpu[01-04,07]") == ["gpu01", "gpu02", "gpu03", "gpu04", "gpu07"]
    assert parse_nodelist("login1,node[8-10]") == ["login1", "node8", "node9", "node10"]
    assert parse_nodelist("r[1-2]n[01-02]") == ["r1n01", "r1n02", "r2n01", "r2n02"]
    assert parse_nodelist("single") == ["single"]
    with pytest.raises(ValueError, match="bad range"):
        parse_nodelist("gpu[04-01]")
    with pytest.raises(ValueError, match="unbalanced"):
        parse_nodelist("gpu[01-02")


def test_environment_detection():
    env = detect_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})
    assert (env.launcher, env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port) == \
        ("torchrun", 5, 8, 1, "n1", 1234)
    env = detect_env({"SLURM_PROCID": "3", "SLURM_NTASKS": "16", "SLURM_LOCALID": "3",
                      "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_JOB_ID": "123456"})
    assert (env.launcher, env.rank, env.world_size, env.local_rank) == ("slurm", 3, 16, 3)
    assert env.nodes == ("gpu01", "gpu02") and env.master_addr == "gpu01" and env.master_port == 20000 + 123456 % 20000
    assert detect_env({"HOME": "/root"}) is None


def test_sbatch_template_renders_valid_bash(tmp_path):
    text = render_sbatch("s2vbench-paper", 2, 8, ["python", "-m", "s2vbench", "scaling", "--sweep", "a b.toml"],
                         partition="gpu", account="proj")
    for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8", "#SBATCH --partition=gpu", "srun "):
        assert line in text
    assert "'a b.toml'" in text
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    with pytest.raises(ValueError, match="nodes >= 1"):
        render_sbatch("x", 0, 8, ["true"])


def test_shipped_sweeps_parse():
    points, notes, name = load_sweep(SWEEPS / "paper_8gpu.toml")
    # fsdp, ulysses and ring at 2, 4 and 8 GPUs, usp at 4 and 8 (it needs two factors > 1), and one point at
    # 1 GPU: there the three strategies are the same one-rank run, so it runs once
    assert name == "paper-8gpu" and len(points) == 3 * 3 + 2 + 1
    assert any("usp at 2 GPUs" in n for n in notes)
    assert sum("the same ranks and degrees as 14b/fsdp/w1/" in n for n in notes) == 2
    assert {p.world for p in points} == {1, 2, 4, 8} and all(p.preset == "14b" and p.ac for p in points)
    smoke, _, _ = load_sweep(SWEEPS / "cpu_smoke.toml")
    assert len(smoke) == 2 * (1 + 3)  # ac on/off x (single at 1; fsdp, ulysses, ring at 2)


def test_weak_scaling_grows_the_batch_with_data_parallelism():
    points, _ = sweep_points("tiny", [1, 2, 4], ["fsdp"], global_batch=2, scaling="weak")
    assert [p.global_batch for p in points] == [2, 4, 8] and all(p.batch_per_rank == 2 for p in points)
    with pytest.raises(ValueError, match="unknown sweep axes"):
        sweep_points("tiny", [1], ["fsdp"], colour=[True])


def test_scaling_through_torchrun(tmp_path):
    out = tmp_path / "sc"
    cmd = [sys.executable, "-m", "s2vbench", "scaling", "--preset", "tiny", "--gpus", "2", "--strategies",
           "ring,ulysses", "--global-batch", "2", "--dtype", "float32", "--steps", "1", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = {r.name: r for r in read_results(out / "results.json")}
    assert len(recs) == 2
    for r in recs.values():
        assert r.metric("step_time").value > 0 and r.metric("compute_time").value > 0
        assert r.config["world"] == 2 and r.environment["torch"]
    assert (out / "report.md").exists() and (out / "speedup.png").exists()


def test_cli_lists_and_positive_numbers_are_checked(capsys):
    import argparse

    from s2vbench.bench.cli import _positive_ints, _positive_minutes, _token_list, positive_int

    assert _positive_ints("1, 8", "--dp-replicate") == [1, 8] and _token_list(None) == [None]
    for bad in ("", "0", "2,-1", "x"):
        with pytest.raises(SystemExit, match="--dp-replicate takes comma-separated positive integers"):
            _positive_ints(bad, "--dp-replicate")
    with pytest.raises(SystemExit, match="--tokens takes"):
        _token_list("44544,0")
    assert positive_int("3") == 3 and _positive_minutes("0.5") == 0.5
    for parse, bad, what in ((positive_int, "0", "a positive integer"), (positive_int, "2.5", "a positive integer"),
                             (_positive_minutes, "-1", "minutes"), (_positive_minutes, "nan", "minutes")):
        with pytest.raises(argparse.ArgumentTypeError, match=what):
            parse(bad)
