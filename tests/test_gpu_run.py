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
    budget = Budget(3.0)  # 180 s left
    _attention_stage(shapes, log, budget, torch.float32, torch.device("cpu"), reserve_s=150.0)
    assert log.records == []  # 60 s per point + 150 s reserved > 180 s left: the later stages keep theirs
    _attention_stage(shapes, log, budget, torch.float32, torch.device("cpu"), reserve_s=0.0)
    assert {r.name for r in log.records} >= {"attention/smoke/sdpa_math_cpu/float32"}


def test_the_grounding_profile_follows_the_device():
    import pytest

    from s2vbench.bench.cli import main
    from s2vbench.bench.profiles import load_profile, profile_for_device

    assert profile_for_device("NVIDIA H200") == "h200"
    assert profile_for_device("NVIDIA A100-SXM4-80GB") == "a100-80gb"
    assert profile_for_device("NVIDIA H100 80GB HBM3") == "h100-sxm"
    assert profile_for_device("cpu") == profile_for_device(None) == "h100-sxm"
    assert load_profile(profile_for_device("NVIDIA H200")).name == "h200"
    with pytest.raises(SystemExit):
        main(["gpu-run", "--budget-min", "0"])
