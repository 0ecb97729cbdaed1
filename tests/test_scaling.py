"""Scaling sweeps: SLURM/torchrun environments, nodelists, the sbatch template, TOML sweeps, torchrun end to end."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import processes_with

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
    with pytest.raises(ValueError, match="unbalanced"):  # closes before it opens
        parse_nodelist("gpu]01[")
    with pytest.raises(ValueError, match="bad host"):
        parse_nodelist("gpu[]")


@pytest.mark.parametrize("environ, match", [
    ({"RANK": "5", "WORLD_SIZE": "2"}, r"RANK=5 is not below WORLD_SIZE=2: ranks run from 0 to 1"),  # hung
    ({"RANK": "-1", "WORLD_SIZE": "2"}, r"RANK='-1': must be an integer >= 0"),  # did nothing, exit 0
    ({"RANK": "0", "WORLD_SIZE": "0"}, r"WORLD_SIZE='0': must be an integer >= 1"),
    ({"RANK": "abc", "WORLD_SIZE": "2"}, r"RANK='abc'"),
    ({"RANK": "0", "WORLD_SIZE": "2.0"}, r"WORLD_SIZE='2.0'"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "x"}, r"LOCAL_RANK='x'"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "abc"}, r"MASTER_PORT='abc': must be an integer from 1 to 65535"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "70000"}, r"MASTER_PORT='70000'"),
    ({"RANK": "0"}, r"RANK is set but WORLD_SIZE is not"),  # was ignored: it launched its own torchrun
    ({"WORLD_SIZE": "2"}, r"WORLD_SIZE is set but RANK is not"),
    ({"SLURM_PROCID": "0"}, r"SLURM_PROCID is set but SLURM_NTASKS is not"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "abc"}, r"SLURM_NTASKS='abc'"),
    ({"SLURM_PROCID": "2", "SLURM_NTASKS": "2"}, r"SLURM_PROCID=2 is not below SLURM_NTASKS=2"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "abc"}, r"SLURM_JOB_ID='abc'"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "-3"}, r"SLURM_LOCALID='-3'"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": ","}, r"SLURM_JOB_NODELIST=',' names no host"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NODELIST": "gpu[01-"}, r"SLURM_NODELIST: unbalanced"),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "gpu[a-b]"}, r"SLURM_JOB_NODELIST: bad range"),
])
def test_malformed_job_environments_are_errors_naming_the_variable(environ, match):
    with pytest.raises(ValueError, match=match):
        detect_env(environ)


def test_run_in_job_refuses_a_job_with_no_point_of_its_size(no_job, tmp_path):
    from s2vbench.bench.points import Point
    from s2vbench.bench.scaling import run_in_job

    points = [Point("tiny", 1, "single"), Point("tiny", 2, "fsdp")]
    no_job.setenv("RANK", "0")
    no_job.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match=r"3 ranks \(WORLD_SIZE=3\) but the sweep has no point at 3 GPUs .*\[1, 2\]"):
        run_in_job(points, tmp_path)  # before: every rank returned at once, rank 0 then found no results file
    no_job.setenv("WORLD_SIZE", "2")
    no_job.setenv("MASTER_PORT", "65535")  # each point's process group takes the next port
    with pytest.raises(ValueError, match="MASTER_PORT=65535 leaves no room"):
        run_in_job(points, tmp_path)
    assert not any(tmp_path.iterdir())


def test_launch_sweep_refuses_points_larger_than_the_node(monkeypatch, tmp_path):
    import torch

    from s2vbench.bench.points import Point
    from s2vbench.bench.scaling import launch_sweep

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match=r"this node has 2 GPUs and every point needs more \(\[4\]\).*--sbatch"):
        launch_sweep([Point("tiny", 4, "fsdp")], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_environment_detection():
    env = detect_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})
    assert (env.launcher, env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port) == \
        ("torchrun", 5, 8, 1, "n1", 1234)
    env = detect_env({"SLURM_PROCID": "3", "SLURM_NTASKS": "16", "SLURM_LOCALID": "3",
                      "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_JOB_ID": "123456"})
    assert (env.launcher, env.rank, env.world_size, env.local_rank) == ("slurm", 3, 16, 3)
    assert env.nodes == ("gpu01", "gpu02") and env.master_addr == "gpu01" and env.master_port == 20000 + 123456 % 20000
    assert detect_env({"HOME": "/root"}) is None
    assert detect_env({"SLURM_NTASKS": "4"}) is None  # an allocation's shell (salloc) is not a task


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
    assert "--out" not in next(line for line in text.splitlines() if line.startswith("srun "))
    # Without a folder of its own, every task of the job gets the same one, from the job id
    text = render_sbatch("s2vbench-paper", 1, 8, ["python", "-m", "s2vbench", "scaling"], out_per_job=True)
    assert text.rstrip().endswith('scaling --out "runs/s2vbench-paper-$SLURM_JOB_ID"')
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    with pytest.raises(ValueError, match=r"SLURM job name 's2vbench-a/b c'.*letters, digits"):
        render_sbatch("s2vbench-a/b c", 1, 8, ["true"], out_per_job=True)


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


@pytest.mark.parametrize("args, kwargs, match", [
    (("tiny", [2], ["fsdp", "ulyses"]), {}, r"unknown strategies \['ulyses'\]; choose from single, fsdp, ulysses"),
    (("tiny", [2], []), {}, "no strategies; choose from"),
    (("nope", [2], ["fsdp"]), {}, "unknown preset 'nope'"),
    (("tiny", [0], ["fsdp"]), {}, r"GPU counts \(gpus\) must be one or more positive integers, got \[0\]"),
    (("tiny", [2.0], ["fsdp"]), {}, "GPU counts"),
    (("tiny", [], ["fsdp"]), {}, "GPU counts"),
    (("tiny", [2], ["fsdp"]), {"global_batch": 0}, "global_batch must be an integer >= 1, got 0"),
    (("tiny", [2], ["fsdp"]), {"steps": 0}, "steps must be an integer >= 1"),
    (("tiny", [2], ["fsdp"]), {"warmup": -1}, "warmup must be an integer >= 0"),
    (("tiny", [2], ["fsdp"]), {"scaling": "medium"}, "scaling must be 'strong' or 'weak'"),
    (("tiny", [2], ["fsdp"]), {"ac": []}, "sweep axis ac is an empty list"),
    (("tiny", [2], ["fsdp"]), {"tokens": [416], "frames": [16]}, "either tokens or frames/height/width, not both"),
    # every combination skipped: one error with each reason, not a report on a results file never written
    (("tiny", [2], ["fsdp"]), {"frames": 50}, r"no point of this sweep can run:\n  skipped .*multiple of 4 .*got 50"),
    (("tiny", [3], ["ulysses"]), {}, r"no point of this sweep can run:\n  skipped .*Ulysses degree 3 must divide"),
    (("tiny", [2], ["single"]), {}, r"no point .*\n  skipped single at 2 GPUs: strategy 'single' runs on one rank"),
])
def test_sweep_wide_mistakes_are_errors_not_skipped_points(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        sweep_points(*args, **kwargs)


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
    # Resume with the first point finished and the second lost: every rank must skip the first (before, rank 0
    # alone skipped it and went on to the second point's port, while rank 1 waited on the first's until timeout)
    doc = json.loads((out / "results.json").read_text())
    kept, lost = doc["records"]
    doc["records"] = [kept]
    (out / "results.json").write_text(json.dumps(doc))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((out / "results.json").read_text())["records"]
    assert [r["name"] for r in again] == [kept["name"], lost["name"]] and again[0] == kept


def test_cli_lists_and_positive_numbers_are_checked(capsys):
    import argparse

    from s2vbench.bench.cli import _positive_ints, _positive_minutes, _token_list, positive_int

    assert _positive_ints("1, 8", "--dp-replicate") == [1, 8] and _token_list(None) == [None]
    for bad in ("", "0", "2,-1", "x", "1.5", "1,,2", "2,"):  # an empty item is a typo, not a shorter list
        with pytest.raises(ValueError, match="--dp-replicate takes comma-separated positive integers"):
            _positive_ints(bad, "--dp-replicate")
    with pytest.raises(ValueError, match="--tokens takes"):
        _token_list("44544,0")
    assert positive_int("3") == 3 and _positive_minutes("0.5") == 0.5
    for parse, bad, what in ((positive_int, "0", "a positive integer"), (positive_int, "2.5", "a positive integer"),
                             (_positive_minutes, "-1", "minutes"), (_positive_minutes, "nan", "minutes")):
        with pytest.raises(argparse.ArgumentTypeError, match=what):
            parse(bad)


def _job_of_one(monkeypatch):
    from s2vbench.parallel.launch import free_port

    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(k, v)


def test_a_job_records_an_oom_point_goes_on_and_resumes_past_a_point_it_died_in(no_job, tmp_path, monkeypatch):
    import torch.distributed as dist

    from s2vbench.bench import scaling
    from s2vbench.bench.points import Point
    from s2vbench.bench.worker import PointOOM

    _job_of_one(monkeypatch)
    oom, boom, fine = (Point("tiny", 1, "single", global_batch=b, dtype="float32", steps=1, warmup=0)
                       for b in (1, 2, 3))
    real, calls = scaling.run_point_rank, []
    fixed = False

    def flaky(rank, world, d):
        name = Point.from_dict(d).name
        calls.append(name)
        if name == oom.name:
            raise PointOOM("out of memory on at least one rank")  # every rank raises it at the same step
        if name == boom.name and not fixed:
            raise RuntimeError("boom on this rank only")
        assert not scaling._rank_file(tmp_path, Point.from_dict(d), 0).exists(), "an earlier job's file is left"
        return real(rank, world, d)

    monkeypatch.setattr(scaling, "run_point_rank", flaky)
    with pytest.raises(RuntimeError, match="boom on this rank only"):
        scaling.run_in_job([oom, boom, fine], tmp_path)
    assert not dist.is_initialized()
    assert [r.name for r in read_results(tmp_path / "results.json")] == [oom.name]  # the OOM did not end the job
    assert "boom on this rank only" in (tmp_path / "ranks" / boom.name.replace("/", "__") / "rank0.failed.txt").read_text()
    calls.clear()
    stale = scaling._rank_file(tmp_path, fine, 0)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"from a job that died before recording this point")
    scaling.run_in_job([oom, boom, fine], tmp_path)  # the next job over the same folder
    assert calls == [fine.name], "neither the recorded point nor the one the last job died in runs again"
    recs = {r.name: r for r in read_results(tmp_path / "results.json")}
    assert list(recs) == [oom.name, boom.name, fine.name]
    assert recs[oom.name].tags == ["oom"] and recs[boom.name].tags == ["failed"]
    assert "boom on this rank only" in recs[boom.name].notes
    assert recs[fine.name].metric("step_time").value > 0
    # the record is now the one place that says it failed: remove it, and the point runs again
    doc = json.loads((tmp_path / "results.json").read_text())
    doc["records"] = [r for r in doc["records"] if r["name"] != boom.name]
    (tmp_path / "results.json").write_text(json.dumps(doc))
    calls.clear()
    fixed = True
    scaling.run_in_job([oom, boom, fine], tmp_path)
    assert calls == [boom.name]
    assert read_results(tmp_path / "results.json")[-1].metric("step_time").value > 0


def test_launch_sweep_records_the_point_a_launch_died_in_and_launches_the_rest(no_job, tmp_path, monkeypatch):
    from s2vbench.bench import scaling
    from s2vbench.bench.points import Point
    from s2vbench.bench.results import Metric, Record, ResultsLog, atomic_write_bytes

    points = [Point("tiny", 2, s, dtype="float32", steps=1) for s in ("fsdp", "ulysses", "ring")]
    launches = []

    def fake_torchrun(world, spec, out, timeout_s):
        launches.append(world)
        log = ResultsLog(out / "results.json")
        todo = [p for p in points if not log.done(p.name)]
        if len(launches) == 1:  # a rank is SIGKILLed in the first point: nothing reported
            return 1, "exitcode  : -9 (pid: 4242)"
        if len(launches) == 2:  # a rank raises in the next one and leaves its traceback
            atomic_write_bytes(scaling._failure_file(out, todo[0], 1), b"ValueError: rank 1 broke")
            return 1, "ChildFailedError"
        for p in todo:
            log.append(Record("iteration", p.name, p.to_dict(), [Metric("step_time", 1.0, "s", "fake")]))
        return 0, ""

    monkeypatch.setattr(scaling, "_torchrun", fake_torchrun)
    log = scaling.launch_sweep(points, tmp_path)
    assert launches == [2, 2, 2]
    recs = {r.name: r for r in log.records}
    assert [recs[p.name].tags for p in points] == [["oom"], ["failed"], []]
    assert "rank 1 broke" in recs[points[1].name].notes


def test_a_torchrun_past_its_timeout_is_killed_with_its_ranks(tmp_path):
    import time

    from s2vbench.bench import scaling
    from s2vbench.bench.points import Point

    spec = tmp_path / "sweep.json"
    spec.write_text(json.dumps([Point("tiny", 1, "single", steps=1000).to_dict()]))  # minutes of work
    t0 = time.monotonic()
    code, _ = scaling._torchrun(1, spec, tmp_path, timeout_s=3)
    assert code is None
    # before: torchrun was SIGKILLed and its rank, in a session of its own, ran on, holding the pipes that
    # the launcher then waited on until the rank finished
    assert time.monotonic() - t0 < 30
    time.sleep(0.5)
    assert not processes_with(str(spec)), "torchrun or one of its ranks outlived the timeout"


def test_a_single_element_range_expands_to_its_one_host():
    # lo == hi is a valid range (SLURM writes gpu[03-03]); only lo > hi is refused
    assert parse_nodelist("gpu[03-03]") == ["gpu03"]
    assert parse_nodelist("gpu[01,03-03,05-06]") == ["gpu01", "gpu03", "gpu05", "gpu06"]
