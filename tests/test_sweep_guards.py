"""What a sweep checks before any rank starts (a backend it lacks, host memory on CPU, a resumed folder measured
with other settings), how it ends (exit status, Ctrl-C) and what a failure record keeps."""

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import processes_with

from s2vbench.bench import cli, sweep
from s2vbench.bench.points import Point
from s2vbench.bench.results import Metric, Record, ResultsLog
from s2vbench.bench.scaling import sweep_points

GIB = 2**30


@pytest.mark.parametrize("axes, match", [
    ({"dtype": ["float32", "bf16"]}, r"unknown dtype \['bf16'\]; choose from float32, bfloat16"),
    ({"attention_backend": ["torch", "flash-attn"]}, r"unknown attention_backend \['flash-attn'\]; choose from torch"),
])
def test_a_typo_in_a_dtype_or_backend_list_fails_the_sweep(axes, match):
    # before: each misspelt value became points "that cannot run", skipped with a note while the rest ran
    with pytest.raises(ValueError, match=match):
        sweep_points("tiny", [2], ["fsdp"], **axes)


def test_backends_this_machine_lacks_are_refused_before_launch(monkeypatch):
    monkeypatch.setattr(sweep.torch.cuda, "is_available", lambda: False)
    flash = Point("tiny", 2, "fsdp", dtype="bfloat16", attention_backend="flash_attn")
    with pytest.raises(ValueError, match=r"1 point\(s\) of this sweep cannot run here \(tiny/fsdp/.*flash_attn\): "
                                         r"the 'flash_attn' attention backend runs on CUDA GPUs only"):
        sweep.check_runnable_here([Point("tiny", 2, "fsdp"), flash])
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="'triton' attention backend needs a CUDA GPU.*TRITON_INTERPRET=1"):
        sweep.check_runnable_here([Point("tiny", 2, "ring", attention_backend="triton")])
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(ValueError, match="interpreter computes bfloat16 wrong"):
        sweep.check_runnable_here([Point("tiny", 2, "ring", dtype="bfloat16", attention_backend="triton")])
    sweep.check_runnable_here([Point("tiny", 2, "ring", dtype="float32", attention_backend="triton")])


def test_points_that_would_exhaust_host_memory_are_refused_on_cpu(monkeypatch):
    from s2vbench.bench.perfmodel import Strategy, predict_training_memory
    from s2vbench.model import clip_layout, get_preset

    monkeypatch.setattr(sweep.torch.cuda, "is_available", lambda: False)
    point = Point("small", 4, "usp", dtype="float32")
    cfg = get_preset("small").model
    peak = predict_training_memory(cfg, clip_layout(cfg, point.clip()), Strategy(1, 2, 2, dtype="float32", ac=False),
                                   point.global_batch).memory_total
    assert sweep.point_host_bytes(point) == pytest.approx(4 * (peak + sweep.RANK_PROCESS_GIB * GIB))
    need = sweep.point_host_bytes(point)
    monkeypatch.setattr(sweep, "host_memory_available", lambda: int(need) + 1)
    sweep.check_runnable_here([point])
    sweep.check_runnable_here([point, Point("tiny", 1, "single")])
    monkeypatch.setattr(sweep, "host_memory_available", lambda: int(need) - 1)
    with pytest.raises(ValueError, match=r"1 of the 2 points need more memory than this CPU-only machine has "
                                         r"available \(.* GiB; every rank runs here.*small/usp/w4.*\(4 rank\(s\)\)"
                                         r".*smaller preset \(tiny or small"):
        sweep.check_runnable_here([point, Point("tiny", 1, "single")])
    sweep.check_runnable_here([point], ranks_on_this_host=False)  # a job's allocation holds its own memory


def test_scaling_defaults_on_a_cpu_machine_are_refused_with_the_predicted_memory(no_job, monkeypatch, tmp_path,
                                                                                 capsys):
    # the 14b preset at 1 to 8 ranks: every rank would have built the whole model in float32 on this host
    from s2vbench.bench import scaling

    monkeypatch.setattr(sweep.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sweep, "host_memory_available", lambda: 64 * GIB)
    monkeypatch.setattr(scaling, "_torchrun", lambda *a: pytest.fail("launched"))
    assert cli.main(["scaling", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("s2vbench scaling: error: 12 of the 12 points need more memory") and "64.0 GiB" in err
    assert "14b/fsdp/w1/dp1-u1-r1/bfloat16/ac0/gb8 about 5,9" in err and "Traceback" not in err


def _record(point: Point, tags=(), value=1.0) -> Record:
    status = {"status": "not_measured"} if value is None else {}
    return Record("iteration", point.name, point.to_dict(), [Metric("step_time", value, "s", "synthetic", **status)],
                  tags=list(tags))


def test_resuming_over_points_measured_with_other_settings_is_refused(tmp_path):
    points = [Point("tiny", 1, "single", steps=5, warmup=2), Point("tiny", 2, "fsdp", steps=5, warmup=2)]
    same, other = _record(points[0]), _record(Point("tiny", 2, "fsdp", steps=3, warmup=1))
    assert other.name == points[1].name  # names leave steps and warm-up out: that is how it slipped through
    sweep.check_resume([same, _record(Point("tiny", 2, "ring"))], points, "r.json", {})  # other names: not ours
    with pytest.raises(ValueError, match=r"r.json already holds 1 of this sweep's points measured with other "
                                         r"settings or elsewhere.*tiny/fsdp/w2.*\(steps 3 there, 5 now, warmup 1 there, 2 now\)"
                                         r".*write to a new --out"):
        sweep.check_resume([same, other], points, "r.json", {})
    # a record's config carries the actual token count beside the requested one; it still compares equal
    tok = Point("tiny", 1, "single", tokens=416)
    cfg = tok.to_dict() | {"tokens": 448, "tokens_requested": 416, "model": {}}
    sweep.check_resume([Record("iteration", tok.name, cfg, [Metric("step_time", 1.0, "s", "x")])], [tok], "r", {})


def test_a_point_measured_on_another_machine_is_not_resumed_as_this_ones():
    # gpu-run refused these; run and scaling kept them, and report then mixed two machines' times in one run
    point = Point("tiny", 1, "single")
    theirs = _record(point)
    theirs.environment = {"device": "cpu", "cpu": "Intel Xeon", "cpu_count": 2}
    here = {"device": "cpu", "cpu": "AMD EPYC", "cpu_count": 2}
    with pytest.raises(ValueError, match=r"r.json already holds 1 of this sweep's points measured with other settings "
                                         r"or elsewhere.*measured on Intel Xeon x 2 cores; this machine is AMD EPYC"):
        sweep.check_resume([theirs], [point], "r.json", here)
    sweep.check_resume([theirs], [point], "r.json", None)  # a job's ranks: not compared
    theirs.environment = dict(here, host="another-runner")  # one machine type, another host: the same machine
    sweep.check_resume([theirs], [point], "r.json", here)


def test_run_sweep_refuses_the_clash_before_running_anything(tmp_path, monkeypatch):
    log = ResultsLog(tmp_path / "results.json")  # this machine's: only the steps differ
    log.append(_record(Point("tiny", 1, "single", steps=1)))
    monkeypatch.setattr(sweep, "run_ranks", lambda *a, **k: pytest.fail("ran a point"))
    with pytest.raises(ValueError, match="steps 1 there, 2 now"):
        sweep.run_sweep([Point("tiny", 1, "single", steps=2)], tmp_path / "results.json", progress=False)


def test_sweep_outcome_fails_on_failed_points_and_on_nothing_measured():
    a, b, c = Point("tiny", 1, "single"), Point("tiny", 2, "fsdp"), Point("tiny", 2, "ring")
    assert sweep.sweep_outcome([_record(a), _record(b, ["oom"], None)], [a, b]) is None  # an OOM is a finding
    assert sweep.sweep_outcome([_record(a, ["oom"], None), _record(b, ["oom"], None)], [a, b]).startswith(
        "none of the 2 points ran: every one ran out of memory")
    text = sweep.sweep_outcome([_record(a), _record(b, ["failed"], None), _record(c, ["failed"], None)], [a, b, c])
    assert text.startswith(f"2 of 3 points failed ({b.name}, {c.name})")
    assert sweep.sweep_outcome([_record(b, ["failed"], None)], [a]) is None  # another sweep's record


def test_a_failure_record_keeps_whole_lines():
    tail = "\n".join(f"  File \"x.py\", line {i}, in f" for i in range(40)) + "\nValueError: the real reason"
    rec = sweep.failure_record(Point("tiny", 1, "single"), RuntimeError("rank 0 failed:\nTraceback\n" + tail))
    how = rec.metric("step_time").how
    assert how.startswith("failed: ...\n  File") and how.endswith("ValueError: the real reason")
    assert len(how) <= len("failed: ") + 500  # each line whole (before: the last 500 characters, cut mid-line)
    assert "\nTraceback" in rec.notes and rec.tags == ["failed"]
    long = sweep.failure_record(Point("tiny", 1, "single"), RuntimeError("x" * 900 + "END"))
    assert long.metric("step_time").how == "failed: ..." + ("x" * 900 + "END")[-497:]


def test_scaling_exits_non_zero_when_every_point_failed(no_job, tmp_path, monkeypatch, capsys):
    from s2vbench.bench import scaling

    monkeypatch.setattr(scaling, "_torchrun", lambda *a: (1, "ValueError: broken on every rank"))
    args = ["scaling", "--preset", "tiny", "--gpus", "2", "--strategies", "fsdp,ring", "--dtype", "float32",
            "--global-batch", "2", "--out", str(tmp_path / "o")]
    assert cli.main(args) == 1  # was 0: a sweep in which nothing ran passed for a success
    out, err = capsys.readouterr()
    assert "report.md" in out and (tmp_path / "o" / "report.md").exists()
    assert err.startswith("s2vbench scaling: 2 of 2 points failed (tiny/fsdp/w2/") and "Traceback" not in err


def test_ctrl_c_stops_scaling_with_its_torchrun_and_ranks(tmp_path):
    out = tmp_path / "o"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS")}
    proc = subprocess.Popen([sys.executable, "-m", "s2vbench", "scaling", "--preset", "tiny", "--gpus", "1",
                             "--strategies", "single", "--global-batch", "1", "--dtype", "float32", "--steps", "1000",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    spec = str(out / "sweep.json")
    deadline = time.monotonic() + 180
    while len(processes_with(spec)) < 2:  # torchrun and its rank
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "torchrun never started"
        time.sleep(0.5)
    time.sleep(3)  # into the point: its rank is up
    proc.send_signal(signal.SIGINT)  # a terminal's Ctrl-C reaches s2vbench; torchrun runs in a session of its own
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    assert f"s2vbench scaling: interrupted; what finished is saved in {out}, and the same command with --out" in err
    time.sleep(0.5)
    assert not processes_with(spec), "torchrun or one of its ranks outlived the Ctrl-C"
