"""The benchmark harness: a 2-process gloo sweep end to end, resume after kill -9, formulas by hand."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from s2vbench.bench.points import Point, strategy_degrees
from s2vbench.bench.report import write_report
from s2vbench.bench.results import ResultsLog, read_results
from s2vbench.bench.sweep import run_sweep


def test_two_process_gloo_sweep_end_to_end(tmp_path):
    points = [Point("tiny", 1, "single", steps=2, inference=True), Point("tiny", 2, "ulysses", steps=2, inference=True),
              Point("tiny", 2, "ring", steps=2, ac=True, grad_accum=2), Point("tiny", 2, "fsdp", steps=2, dp_replicate=2)]
    log = run_sweep(points, tmp_path / "results.json", progress=False)
    recs = {r.name: r for r in read_results(log.path)}
    assert list(recs) == [p.name for p in points]
    for p in points:
        r = recs[p.name]
        st = r.metric("step_time")
        assert st.unit == "s" and st.value > 0 and st.stats["n"] == 2 and st.stats["warmup"] == 1
        assert r.metric("compute_time").value > 0 and r.metric("peak_rss").unit == "GiB"
        assert r.metric("saved_activations").value > 0
        assert r.metric("mfu").status == "not_measured"
        for m in r.metrics:  # every counted collective equals its closed form
            if m.name.startswith("comm_"):
                assert m.value == m.stats["analytic"], (p.name, m.name)
    assert {m.name for m in recs[points[1].name].metrics} >= {"comm_all_to_all", "comm_fsdp_all_gather"}
    # HSDP of two one-rank groups: nothing sharded, only the gradient all-reduce crosses between them
    hsdp = {m.name: m for m in recs[points[3].name].metrics}
    assert hsdp["comm_hsdp_all_reduce"].value > 0 and "comm_fsdp_all_gather" not in hsdp
    busy = hsdp["collective_time_hsdp_all_reduce"]  # FSDP2's all-reduces, told apart from the loss all-reduce
    assert busy.value > 0 and "torch.profiler" in busy.how and busy.stats["calls"] == hsdp["comm_hsdp_all_reduce"].stats["calls"]
    for p in points[:2]:  # inference: CFG denoising steps, timed like training steps
        inf = recs[p.name].metric("inference_step_time")
        assert inf.unit == "s" and inf.value > 0 and inf.stats["n"] == 2
    assert recs[points[2].name].metric("tflops_per_device").stats["recompute_flops_share"] == pytest.approx(0.25)
    report = write_report([log.path], tmp_path / "report")
    text = report.read_text()
    assert "| ulysses" in text and "speed-up" in text and "tiny/single/w1" in text and "| fsdp x2 HSDP" in text
    for png in ("speedup.png", "exposed_comm.png", "step_times.png", "memory.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000, png


def test_strategy_degrees_and_validation():
    assert strategy_degrees("usp", 8) == (1, 4, 2) and strategy_degrees("fsdp", 4) == (4, 1, 1)
    with pytest.raises(ValueError, match="two factors"):
        strategy_degrees("usp", 2)
    with pytest.raises(ValueError, match="does not split over 2"):
        Point("tiny", 2, "fsdp", global_batch=3).validate()
    with pytest.raises(ValueError, match="valid degrees"):
        Point("tiny", 3, "ulysses").validate()
    # HSDP: the strategy runs inside each replica group
    hsdp = Point("tiny", 4, "ulysses", dp_replicate=2)
    assert hsdp.degrees == (1, 2, 1) and hsdp.dp == 2 and hsdp.batch_per_rank == 1 and "/rep2-dp1-u2-r1/" in hsdp.name
    assert hsdp.parallel_config().world_size == 4
    with pytest.raises(ValueError, match="choose a divisor of 4"):
        Point("tiny", 4, "fsdp", dp_replicate=3).validate()
    with pytest.raises(ValueError, match="cannot be replicated"):
        Point("tiny", 4, "single", dp_replicate=2).validate()
    with pytest.raises(ValueError, match="positive integer"):
        Point("tiny", 2, "fsdp", dp_replicate=0).validate()


def _records(path):
    try:
        return read_results(path)
    except Exception:
        return []


def test_resume_after_kill_9_during_a_timed_step(tmp_path):
    out = tmp_path / "run"
    # the sweep's resume only: the calibration stage's own resume is tested in test_calibrate
    cmd = [sys.executable, "-m", "s2vbench", "run", "--preset", "tiny", "--steps", "30", "--out", str(out),
           "--no-calibration", "--quiet"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(_records(out / "results.json")) < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3)  # now inside the second point's timed steps
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = _records(out / "results.json")
    assert 1 <= len(first) < 5
    # a stray temp file of an interrupted write must not confuse the resume
    (out / ".results.json.crashed.tmp").write_text('{"schema": "s2vbench.res')
    # the same settings: a resume with others is refused (test_sweep_guards), lest it mix them in one file
    subprocess.run(cmd, check=True, timeout=600, capture_output=True)
    final = read_results(out / "results.json")
    names = [r.name for r in final]
    assert len(names) == len(set(names)) == 5  # nothing lost, nothing duplicated
    for old in first:  # finished points were kept as they were, not redone
        assert json.dumps(vars(old), default=str) == json.dumps(vars(final[names.index(old.name)]), default=str)
    assert (out / "report.md").exists()


def test_results_log_survives_a_killed_write(tmp_path):
    path = tmp_path / "results.json"
    log = ResultsLog(path, environment={})
    from s2vbench.bench.results import Metric, Record

    log.append(Record("iteration", "a", {}, [Metric("step_time", 1.0, "s", "t")]))
    good = path.read_text()
    # a writer killed mid-write leaves only its temp file; the results file is the last complete one
    (tmp_path / ".results.json.x.tmp").write_text(good[: len(good) // 2])
    again = ResultsLog(path, environment={})
    assert [r.name for r in again.records] == ["a"]
    again.append(Record("iteration", "b", {}, [Metric("step_time", 2.0, "s", "t")]))
    assert [r.name for r in read_results(path)] == ["a", "b"]


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_matmul_flops_are_what_torch_counts_in_a_real_forward(preset):
    # Every linear and convolution of the model (blocks, injections, FramePack, audio encoder, embeddings,
    # head) against torch's FlopCounterMode on a real CPU forward: exact, so no term can drift unseen. (The
    # attention cores are our own ops, which it does not count; the formulas below check those by hand.)
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from s2vbench.bench.analytic import forward_flops
    from s2vbench.bench.worker import synthetic_batch
    from s2vbench.model import WanS2V, get_preset
    from s2vbench.model.sequence import clip_layout

    p = get_preset(preset)
    model = WanS2V(p.model).eval()
    b = synthetic_batch(p.model, p.clip, 1, seed=0)
    with torch.no_grad(), FlopCounterMode(display=False) as counted:
        model(b.latents, torch.full((1,), 500.0), b.context, b.ref_latents, b.audio_input, b.motion_latents,
              b.cond_states)
    assert set(map(str, counted.get_flop_counts()["Global"])) == {"aten.convolution", "aten.addmm"}
    assert forward_flops(p.model, clip_layout(p.model, p.clip)).matmul == counted.get_total_flops()


def test_bucketing_cost_and_training_state_by_hand():
    from s2vbench.bench.analytic import clip_step_cost, parameter_count, training_state_bytes
    from s2vbench.model import get_preset

    cfg = get_preset("tiny").model
    n, p = 416, parameter_count(cfg)
    # 6 P n for the weights, 3 x 4 n^2 d per layer for self-attention
    assert clip_step_cost(cfg, n) == 6 * p * n + 12 * cfg.num_layers * cfg.dim * n * n
    # bf16 parameters and gradients beside float32 AdamW moments: the moments stay 8 B per parameter
    assert training_state_bytes(cfg, shards=2, param_bytes=2) == {"params": p, "grads": p, "optimizer": 4 * p}


def test_flop_and_memory_formulas_by_hand():
    from s2vbench.bench.analytic import forward_flops, parameter_count, training_state_bytes
    from s2vbench.model import get_preset, sequence_layout

    cfg = get_preset("tiny").model
    lay = sequence_layout(cfg, 4, 16, 16, with_motion=True)  # 256 noisy + 64 ref + 96 motion = 416 tokens
    f = forward_flops(cfg, lay)
    # self-attention cores: 4 layers x 4 x 416^2 x 64
    assert f.attention == 4 * 4 * 416 * 416 * 64 == 177_209_344
    # text (16 keys) and audio (5 keys per frame, 3 injections over 256 noisy tokens) attention cores
    assert f.cross_attention == 4 * 4 * 416 * 16 * 64 + 3 * 4 * 256 * 5 * 64 == 7_798_784
    # per block: qkvo 8*416*64^2 + text q,o 4*416*64^2 + text k,v 4*16*64^2 + FFN 4*416*64*128
    per_block = 13_631_488 + 6_815_744 + 262_144 + 13_631_488
    assert per_block == 2 * 416 * 64 * 64 * 4 + 2 * 416 * 64 * 64 * 2 + 2 * 16 * 64 * 64 * 2 + 2 * 416 * 64 * 128 * 2
    assert f.matmul > 4 * per_block
    assert parameter_count(cfg) == 648_073
    big = training_state_bytes(get_preset("14b").model, shards=8)
    assert big["params"] == 16_295_755_609 * 4 / 8 and big["optimizer"] == 2 * big["params"]


def test_device_peaks_and_oom_classification():
    from s2vbench.bench.hardware import bf16_peak_tflops
    from s2vbench.bench.sweep import failure_record

    assert bf16_peak_tflops("NVIDIA H100 80GB HBM3") == 989.4 and bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert bf16_peak_tflops("NVIDIA H200") == 989.4 and bf16_peak_tflops("cpu") is None
    assert bf16_peak_tflops("NVIDIA H200 NVL") == 835.5  # the PCIe card: lower clocks and power than SXM
    p = Point("tiny", 2, "ring")
    assert failure_record(p, RuntimeError("rank 1 failed: process exited with code -9")).tags == ["oom"]
    assert failure_record(p, RuntimeError("PointOOM: out of memory on at least one rank")).tags == ["oom"]
    assert failure_record(p, RuntimeError("exitcode  : -9 (pid: 12)")).tags == ["oom"]
    assert failure_record(p, RuntimeError("ValueError: boom")).tags == ["failed"]


def test_clip_geometry_axes_and_a_chrome_trace(tmp_path):
    p = Point("tiny", 1, "single", frames=8, height=128, width=192, trace=True, steps=1)
    p.validate()
    c = p.clip()
    assert (c.latent_frames, c.latent_height, c.latent_width) == (2, 16, 24) and p.name.endswith("/8f-128x192")
    with pytest.raises(ValueError, match="multiple of 4"):
        Point("tiny", 1, "single", frames=6).validate()
    with pytest.raises(ValueError, match="FramePack"):
        Point("tiny", 1, "single", height=80).validate()  # 10 latent rows: FramePack needs a multiple of 8
    log = run_sweep([p], tmp_path / "results.json", progress=False)
    (rec,) = read_results(log.path)
    assert rec.config["tokens"] == 2 * 8 * 12 + 8 * 12 + (8 * 12 + 4 * 6 + 4 * 2 * 3)
    trace = rec.notes.removeprefix("Chrome trace: ")
    assert trace.endswith(".trace.json") and json.loads(open(trace).read())["traceEvents"]
