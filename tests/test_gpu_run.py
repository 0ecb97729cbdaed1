"""The GPU run script, on CPU: tiny shapes, torch rows measured, Triton rows honestly not measured."""

import torch

from s2vbench.bench.gpu_run import gpu_run
from s2vbench.bench.results import read_results


def test_gpu_run_without_cuda_records_what_it_can(tmp_path, monkeypatch, capsys):
    if torch.cuda.is_available():
        return  # on a GPU this is the real run, exercised by `s2vbench gpu-run` itself
    path = gpu_run(tmp_path, budget_minutes=5)
    records = {r.name: r for r in read_results(path)}
    assert records["attention-correctness/needs-cuda"].metric("passed").status == "not_measured"
    tri = records["attention/smoke/triton/float32"]
    assert all(m.status == "not_measured" and "needs CUDA" in m.how for m in tri.metrics)
    torch_row = records["attention/smoke/sdpa_math_cpu/float32"]
    assert torch_row.metric("fwd_time").value > 0 and torch_row.metric("fwd_tflops").unit == "TFLOP/s"
    conv = [r for r in records.values() if r.kind == "causal_conv_kernel"]
    assert len(conv) == 3 and all(r.metric("torch_time").unit == "us" for r in conv)
    assert all(r.metric("triton_time").status == "not_measured" for r in conv)
    model = [r for r in records.values() if r.kind == "iteration"]
    assert len(model) == 1 and model[0].metric("step_time").value > 0  # the tiny stand-in on CPU
    assert model[0].metric("mfu").status == "not_measured" and model[0].metric("gpu_power").status == "not_measured"
    # a second run resumes: finished points are not redone
    before = len(records)
    gpu_run(tmp_path, budget_minutes=5)
    assert len(read_results(path)) == before
    assert "not measured" in capsys.readouterr().out


def test_stages_leave_the_later_stages_their_time(tmp_path):
    from s2vbench.bench.gpu_run import Budget, _attention_stage
    from s2vbench.bench.kernels import smoke_attention_shapes
    from s2vbench.bench.results import ResultsLog

    log = ResultsLog(tmp_path / "results.json", environment={})
    shapes = smoke_attention_shapes()
    from s2vbench.bench.gpu_run import ATTENTION_POINT_S, DEFAULT_BUDGET_MIN, GROUND_POINT_S, MODEL_STAGE_S

    assert Budget(DEFAULT_BUDGET_MIN).need(ATTENTION_POINT_S) == ATTENTION_POINT_S
    budget = Budget(3.0)  # 180 s left: a shorter lease scales every stage's need alike, so none is starved
    assert budget.need(ATTENTION_POINT_S) == ATTENTION_POINT_S * 3.0 / DEFAULT_BUDGET_MIN
    # with the later stages' reserve, the first per-rank shape still runs in a 3-minute lease
    assert budget.allows(budget.need(ATTENTION_POINT_S + MODEL_STAGE_S + 2 * GROUND_POINT_S) + 20)
    _attention_stage(shapes, log, budget, torch.float32, torch.device("cpu"), reserve_s=170.0)
    assert log.records == []  # 22.5 s per point + 170 s reserved > 180 s left: the later stages keep theirs
    _attention_stage(shapes, log, budget, torch.float32, torch.device("cpu"), reserve_s=0.0)
    assert {r.name for r in log.records} >= {"attention/smoke/sdpa_math_cpu/float32"}


def test_the_grounding_profile_follows_the_device():
    import pytest

    from s2vbench.bench.cli import main
    from s2vbench.bench.profiles import load_profile, profile_for_device

    assert profile_for_device("NVIDIA H200") == "h200"
    assert profile_for_device("NVIDIA A100-SXM4-80GB") == "a100-80gb"
    assert profile_for_device("NVIDIA H100 80GB HBM3") == "h100-sxm"
    assert profile_for_device("cpu") is None and profile_for_device(None) is None
    assert load_profile(profile_for_device("NVIDIA H200")).name == "h200"
    with pytest.raises(SystemExit):
        main(["gpu-run", "--budget-min", "0"])


def test_a_variant_that_fails_is_recorded_and_the_others_are_checked(monkeypatch):
    from s2vbench.bench.kernels import attention_correctness
    from s2vbench.kernels import attention

    real_forward = attention.attention_reference

    def forward(q, k, v, variant="pointer"):
        if variant == "tma":
            raise RuntimeError("TMA needs compute capability 9.0 (simulated)")
        return real_forward(q, k, v)

    monkeypatch.setattr(attention, "attention_forward", forward)
    monkeypatch.setattr(attention, "attention_backward", attention.attention_backward_reference)
    recs = {r.config["variant"]: r for r in attention_correctness(64, torch.float32, torch.device("cpu"))}
    assert recs["tma"].metric("passed").status == "not_measured" and "TMA needs" in recs["tma"].metric("passed").how
    assert recs["pointer"].metric("passed").value == 1.0 and recs["tma_ws"].metric("passed").value == 1.0
    # the local attention of Ulysses and ring (here aten's CPU kernel), ring's two blocks merged
    from s2vbench.bench.kernels import RING_LOCAL_VARIANT

    assert recs[RING_LOCAL_VARIANT].metric("passed").value == 1.0, recs[RING_LOCAL_VARIANT].metrics


def _cpu_only():
    import pytest

    if torch.cuda.is_available():
        pytest.skip("the CPU stand-ins' record names")


def _file_with(path, records, environment=None):
    from s2vbench.bench.results import ResultsLog

    log = ResultsLog(path, environment=environment)  # None: this machine's
    log.extend(records)
    return path.read_bytes()


def _needs_cuda_record():
    from s2vbench.bench.results import Metric, Record

    return Record("attention_correctness", "attention-correctness/needs-cuda", {},
                  [Metric("passed", None, "1", "needs a GPU", status="not_measured")])


def test_gpu_run_resumes_its_own_results_on_this_machine(tmp_path):
    _cpu_only()
    path = tmp_path / "results.json"
    _file_with(path, [_needs_cuda_record()])
    gpu_run(tmp_path, budget_minutes=1e-9)  # no minutes: nothing new is measured, and nothing refused
    assert [r.name for r in read_results(path)] == ["attention-correctness/needs-cuda"]


def test_gpu_run_refuses_another_commands_results(tmp_path, capsys):
    # it used to append its records to `run`'s results.json, which `report` then mixed with them
    import re

    from s2vbench.bench import cli
    from s2vbench.bench.results import Metric, Record

    _cpu_only()
    path = tmp_path / "results.json"
    run_point = Record("iteration", "small/single/w1/dp1-u1-r1/float32/ac0/gb2", {"world": 1, "strategy": "single"},
                       [Metric("step_time", 5.0, "s", "x")])
    before = _file_with(path, [run_point])
    assert cli.main(["gpu-run", "--out", str(tmp_path), "--budget-min", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("s2vbench gpu-run: error: ") and err.count("\n") == 1, err
    assert re.search(rf"{re.escape(str(path))} holds 1 record\(s\) gpu-run does not write here \(kind iteration: "
                     rf"small/single/w1/", err), err
    assert "pass a new --out, or move" in err
    assert path.read_bytes() == before  # left as it was


def test_gpu_run_refuses_results_of_another_machine_or_other_settings(tmp_path):
    import dataclasses

    import pytest

    from s2vbench.bench.kernels import wan_conv_shapes
    from s2vbench.bench.results import Metric, Record, capture_environment

    _cpu_only()
    elsewhere = tmp_path / "elsewhere"
    _file_with(elsewhere / "results.json", [_needs_cuda_record()],
               environment={**capture_environment(), "cpu": "Another CPU", "cpu_count": 96})
    with pytest.raises(ValueError, match=r"1 measured on another machine \(Another CPU x 96 cores; this one is "):
        gpu_run(elsewhere, budget_minutes=1e-9)
    # the full-width conv where a CPU run measures an eighth of it: the same name, other settings
    wide = tmp_path / "wide"
    conv = wan_conv_shapes(scale=1)[0]
    _file_with(wide / "results.json", [Record("causal_conv_kernel", f"causal-conv/{conv.name}/torch.float32",
                                              {"shape": dataclasses.asdict(conv), "dtype": "torch.float32"},
                                              [Metric("torch_time", 50.0, "us", "x")])])
    with pytest.raises(ValueError, match=r"1 of gpu-run's record\(s\) measured with other settings "
                                         r".*causal-conv/conv1_local"):
        gpu_run(wide, budget_minutes=1e-9)


def test_the_outcome_names_failures_and_wrong_kernels_and_lets_findings_pass():
    from s2vbench.bench.gpu_run import gpu_run_outcome
    from s2vbench.bench.results import Metric, Record

    def rec(name, kind, *metrics, tags=()):
        return Record(kind, name, {}, list(metrics), tags=list(tags))

    timed = rec("attention/smoke/sdpa_math_cpu/float32", "attention_kernel", Metric("fwd_time", 8.0, "ms", "x"))
    needs_cuda = rec("attention/smoke/triton/float32", "attention_kernel",
                     Metric("fwd_time", None, "ms", "needs CUDA", status="not_measured"))
    oom = rec("model", "iteration", Metric("step_time", None, "s", "oom: ...", status="not_measured"), tags=["oom"])
    assert gpu_run_outcome([timed, needs_cuda, oom]) is None  # reasons and an OOM are findings
    assert gpu_run_outcome([needs_cuda]).startswith("nothing was measured")
    crashed = rec("ground/x", "iteration", Metric("step_time", None, "s", "failed: ...", status="not_measured"),
                  tags=["failed"])
    wrong = rec("attention-correctness/tma/32768/torch.bfloat16", "attention_correctness",
                Metric("out_max_abs_err", 0.5, "1", "x"), Metric("passed", 0.0, "1", "x"))
    line = gpu_run_outcome([timed, crashed, wrong])
    assert "1 of 3 points failed (ground/x)" in line and \
        "1 attention kernel(s) failed the correctness check, an error above 2x torch's own " \
        "(attention-correctness/tma/32768/torch.bfloat16)" in line
