"""`report` on what gpu-run writes besides iterations: kernels, correctness and the grounding (synthetic records
shaped as gpu-run writes them on a GPU; no measuring)."""

import pytest

from s2vbench.bench import cli
from s2vbench.bench.results import Metric, Record, ResultsLog

H100 = {"device": "NVIDIA H100 80GB HBM3", "device_count": 1, "cpu": "test-cpu", "cpu_count": 16,
        "git_commit": "a" * 40}
ULYSSES = {"name": "ulysses8-rank", "batch": 1, "heads": 5, "q_len": 44544, "kv_len": 44544, "head_dim": 128}
CONV = {"name": "conv1_local", "batch": 1, "c_in": 1024, "c_out": 5120, "t": 153, "stride": 1, "groups": 4}


def _attention(provider, fwd_ms, bwd_ms):
    return Record("attention_kernel", f"attention/ulysses8-rank/{provider}/bfloat16",
                  {"shape": ULYSSES, "provider": provider, "dtype": "bfloat16", "device": "cuda"},
                  [Metric("fwd_time", fwd_ms, "ms", "do_bench"),
                   Metric("fwd_tflops", 500.0 * 20 / fwd_ms, "TFLOP/s", "x"),
                   Metric("bwd_time", bwd_ms, "ms", "do_bench"), Metric("bwd_tflops", 400.0, "TFLOP/s", "x"),
                   Metric("fwd_bwd_time", fwd_ms + bwd_ms, "ms", "x"), Metric("fwd_bwd_tflops", 420.0, "TFLOP/s", "x")])


def _correctness(variant, dq_err, passed):
    errs = [Metric(f"{k}_max_abs_err", dq_err if k == "dq" else 1e-3, "1", "x",
                   stats={"torch_same_dtype": 2e-3, "within_2x_rule": float(k != "dq" or dq_err <= 4e-3)})
            for k in ("out", "lse", "dq", "dk", "dv")]
    return Record("attention_correctness", f"attention-correctness/{variant}/32768/torch.bfloat16",
                  {"n": 32768, "heads": 2, "head_dim": 128, "dtype": "torch.bfloat16", "variant": variant},
                  errs + [Metric("passed", passed, "1", "2x rule")])


def _ground(strategy):
    config = {"preset": "14b-2layer", "world": 8, "strategy": strategy, "hardware_profile": "h100-sxm"}
    return Record("ground", f"ground/14b-2layer/{strategy}/w8", config,
                  [Metric("rank0_compute_time", 1.25, "s", "fake pg"),
                   Metric("model_compute_time", 1.0, "s", "perfmodel", "predicted"),
                   Metric("grounded_14b_step_time", 11.5, "s", "measured x ratio + comm", "predicted"),
                   Metric("model_14b_step_time", 9.75, "s", "perfmodel alone", "predicted"),
                   Metric("peak_allocated", 41.5, "GiB", "max_memory_allocated")],
                  tags=["fake_pg"], notes="device NVIDIA H100 80GB HBM3")


def _gpu_run_results(path, with_model=False):
    log = ResultsLog(path, environment=H100)
    log.extend([_correctness("pointer", 1e-3, 1.0), _correctness("tma", 9e-3, 0.0),
                Record("attention_correctness", "attention-correctness/tma_ws/32768/torch.bfloat16",
                       {"variant": "tma_ws"},
                       [Metric.failed("passed", "1", RuntimeError("no warp specialisation here"))]),
                _attention("triton", 20.0, 50.0), _attention("sdpa_cudnn", 25.0, 45.0),
                _attention("sdpa_flash", 30.0, 60.0), _ground("ulysses"),
                # grounding points that failed, as run_ground records them, and as it did before 2026-12-08
                Record("ground", "ground/14b-2layer/ring/w8",
                       {"preset": "14b-2layer", "world": 8, "strategy": "ring"},
                       [Metric("step_time", None, "s", "failed: RankFailed: rank 0 exited with code 1",
                               status="not_measured")], tags=["failed"]),
                Record("iteration", "ground/14b-2layer/ring/w4",
                       {"preset": "14b-2layer", "world": 4, "strategy": "ring"},
                       [Metric("step_time", None, "s", "failed: RankFailed: rank 0 exited with code 1",
                               status="not_measured")], tags=["failed"]),
                Record("causal_conv_kernel", "causal-conv/conv1_local/torch.bfloat16",
                       {"shape": CONV, "dtype": "torch.bfloat16", "device": "cuda"},
                       [Metric("torch_time", 100.0, "us", "x"), Metric("triton_time", 40.0, "us", "x"),
                        Metric("speedup_vs_torch", 2.5, "1", "x")])])
    if with_model:
        config = {"preset": "14b-2layer", "world": 1, "strategy": "single", "ac": True, "dtype": "bfloat16"}
        log.append(Record("iteration", "14b-2layer/single/w1", config,
                          [Metric("step_time", 4.0, "s", "x", stats={"min": 4.0, "max": 4.0, "n": 1, "step0": 4.0}),
                           Metric("exposed_comm", 0.0, "s", "x", stats={"share": 0.0}),
                           Metric("tflops_per_device", 415.0, "TFLOP/s", "x"), Metric("mfu", 0.42, "1", "x"),
                           Metric("cuda_peak_allocated", 61.25, "GiB", "x", stats={"reserved": 70.0}),
                           Metric("gpu_power", 650.0, "W", "x", stats={"max": 700.0, "sm_util_mean": 98.0,
                                                                      "memory_used_gib_max": 72.0})]))
    return log.path


def _row(text, *cells):
    """The table row holding every one of ``cells``."""
    rows = [line for line in text.splitlines() if line.startswith("|") and all(c in line for c in cells)]
    assert len(rows) == 1, (cells, rows)
    return rows[0]


def test_report_tables_what_gpu_run_measures_without_a_model_point(tmp_path, capsys):
    # refused before: "holds no iteration records (only attention_correctness, ...)"
    path = _gpu_run_results(tmp_path / "results.json")
    assert cli.main(["report", str(path), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "## Iteration time" not in text
    # kernels against torch, with units
    assert "| fwd ms " in text and "| fwd TFLOP/s " in text and "| fwd vs torch " in text
    triton = _row(text, "ulysses8-rank (B1 H5 N44544 D128)", "| triton ")
    assert "| 20 " in triton and "| 1.25x " in triton and "| 0.90x " in triton and "sdpa_cudnn" in triton
    # correctness against the 2x rule
    assert "2x rule" in text
    assert "1.00e-03 vs 2.00e-03" in _row(text, "| pointer ") and "| yes " in _row(text, "| pointer ")
    tma = _row(text, "| tma ")
    assert "9.00e-03 vs 2.00e-03 **over 2x**" in tma and "**NO**" in tma
    assert "not measured: failed: RuntimeError: no warp specialisation here" in _row(text, "| tma_ws ")
    # the grounding, each figure marked measured or predicted; the failed point named, not an iteration
    ground = _row(text, "| ulysses w8 ")
    assert "1.25 (measured)" in ground and "11.5 (predicted)" in ground and "9.75 (predicted)" in ground
    assert "| 1.25 " in ground and "h100-sxm" in ground  # measured / model
    for world in (8, 4):
        assert f"- `ground/14b-2layer/ring/w{world}`: failed: RankFailed" in text
    assert "ring w8" not in text  # listed as a point that did not run, not as a row of empty figures
    # the conv: times, speed-up, and bytes (x, weight, bias, output: 33,347,584 in bf16) over the time
    conv = _row(text, "conv1_local (B1 1024->5120 T153 stride 1)")
    assert "| 100.0 " in conv and "| 40.0 " in conv and "| 2.50 " in conv and "| 833.7 " in conv
    assert "| Triton GB/s " in text


def test_report_has_the_model_points_gpu_figures(tmp_path):
    path = _gpu_run_results(tmp_path / "results.json", with_model=True)
    text = (tmp_path / "rep" / "report.md").read_text() if cli.main(
        ["report", str(path), "--out", str(tmp_path / "rep")]) == 0 else ""
    assert "| single " in text and "| ring " not in text  # the failed grounding point is no iteration row
    gpu = _row(text, "| 14b-2layer/single/w1 ")
    assert "| 42.0% " in gpu and "| 61.25 " in gpu and "| 70.00 " in gpu and "| 650 " in gpu and "| 98 " in gpu


def test_report_still_refuses_records_it_has_no_table_for(tmp_path):
    from s2vbench.bench.report import write_report
    from s2vbench.bench.results import ResultsError

    log = ResultsLog(tmp_path / "results.json", environment=H100)
    log.append(Record("buckets", "b", {}, [Metric("utilisation", 0.9, "1", "x")]))
    with pytest.raises(ResultsError, match=r"no iteration records \(only buckets\) nor attention_correctness, "
                                          r"attention_kernel, ground, causal_conv_kernel ones"):
        write_report([log.path], tmp_path / "rep")


def test_the_header_names_every_machine_and_commit(tmp_path):
    # it gave the first record's machine and commit as every record's
    from s2vbench.bench.report import write_report

    gpu = _gpu_run_results(tmp_path / "gpu.json")
    mixed = ResultsLog(tmp_path / "mixed.json", environment={"device": "cpu", "cpu": "cpu-a", "cpu_count": 2,
                                                             "git_commit": "b" * 40})
    for i, env in enumerate([{}, {}, {"device": "cpu", "cpu": "cpu-b", "cpu_count": 8, "git_commit": "b" * 40}]):
        mixed.append(Record("iteration", f"p{i}", {"world": 1, "strategy": "single"},
                            [Metric("step_time", 1.0, "s", "x"), Metric("exposed_comm", 0.0, "s", "x")],
                            environment=env))
    text = write_report([gpu, mixed.path], tmp_path / "rep").read_text()
    assert "Device: **" not in text
    assert "(3 machine(s), 2 commit(s))" in text
    assert (f"- **NVIDIA H100 80GB HBM3 | test-cpu x 16 cores** (1 GPUs), git aaaaaaaaaaaa: 10 record(s) from "
            f"{gpu};") in text
    assert f"- **cpu-a x 2 cores** (0 GPUs), git bbbbbbbbbbbb: 2 record(s) from {mixed.path};" in text
    assert f"- **cpu-b x 8 cores** (0 GPUs), git bbbbbbbbbbbb: 1 record(s) from {mixed.path};" in text
    alone = write_report([gpu], tmp_path / "alone").read_text()  # one machine and commit: one line, as before
    assert "Device: **NVIDIA H100 80GB HBM3** (1 GPUs); CPU test-cpu x 16; " in alone and "git aaaaaaaaaaaa." in alone


def test_speed_up_is_against_the_baseline_of_the_same_machine():
    # a 2-rank point of a fast machine measured against a slow machine's 1-rank baseline showed the machines'
    # difference as scaling
    from s2vbench.bench.report import speedups
    from s2vbench.bench.results import Metric, Record

    def point(world, step, cpu):
        return Record("iteration", f"{cpu}/w{world}", {"world": world, "strategy": "fsdp" if world > 1 else "single",
                                                       "preset": "small", "global_batch": 2},
                      [Metric("step_time", step, "s", "synthetic"),
                       Metric("exposed_comm", 0.0, "s", "synthetic", stats={"share": 0.0})],
                      environment={"device": "cpu", "cpu": cpu, "cpu_count": 2})

    bases, sp = speedups([point(1, 4.0, "slow"), point(2, 2.5, "slow"), point(1, 1.0, "fast"), point(2, 0.8, "fast")])
    assert len(bases) == 2
    assert sp["fast/w2"][0] == 1.0 / 0.8 and sp["slow/w2"][0] == 4.0 / 2.5
