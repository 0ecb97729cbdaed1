"""Rank 0's share of a multi-rank job under the fake process group, recorded next to the model."""

from __future__ import annotations

from s2vbench.bench.ground import ground_points, run_ground
from s2vbench.bench.results import ResultsLog, read_results


def test_ground_runs_rank0_share_and_records_measured_and_predicted(tmp_path):
    log = ResultsLog(tmp_path / "ground.json")
    points = ground_points(world=4, on_gpu=False)
    run_ground(points, log, timeout_s=240)
    recs = read_results(tmp_path / "ground.json")
    assert [r.name for r in recs] == [f"ground/{p.name}" for p in points]
    for r in recs:
        assert r.kind == "ground", r.notes
        m = r.metric("rank0_compute_time")
        assert m.status == "measured" and m.value > 0
        # no shipped profile describes a CPU: the model's figures would be an H100's (they were: a "grounded"
        # 297.6 s beside the model's 0.359 s)
        for name in ("model_compute_time", "grounded_14b_step_time", "model_14b_step_time"):
            m = r.metric(name)
            assert m.status == "not_measured" and "no shipped hardware profile describes cpu" in m.how
        assert r.config["hardware_profile"] is None
        assert r.metric("peak_allocated").status == "not_measured"  # no CUDA here
    # a re-run resumes: nothing is repeated or lost
    run_ground(points, ResultsLog(tmp_path / "ground.json"), timeout_s=240)
    assert len(read_results(tmp_path / "ground.json")) == len(points)


def test_each_ground_point_asks_the_lease_and_is_stopped_within_it(tmp_path, monkeypatch):
    from s2vbench.parallel import launch

    calls = []

    def fake_run_ranks(fn, world, point_dict, timeout_s):
        calls.append(timeout_s)
        raise TimeoutError(f"ranks [0] did not finish within {timeout_s:.0f} s")

    monkeypatch.setattr(launch, "run_ranks", fake_run_ranks)
    points = ground_points(world=8, on_gpu=True)
    log = ResultsLog(tmp_path / "ground.json", environment={})
    left = iter([50.0, 50.0])
    run_ground(points, log, left_s=lambda: next(left), need_s=60.0)
    assert calls == [] and log.records == []  # too little left: neither starts, a resume runs them
    left = iter([300.0, 300.0, 100.0, 100.0])  # asked twice a point; the first point took 200 s
    run_ground(points, log, left_s=lambda: next(left), need_s=60.0)
    # each stopped within what is left, keeping run_ranks' own slack and the next point's need
    assert calls == [300.0 - 45.0 - 60.0, 60.0]
    assert [r.tags for r in log.records] == [["failed"], ["failed"]] and "within 195 s" in log.records[0].notes
    assert [r.kind for r in log.records] == ["ground", "ground"]  # was "iteration": report took them for a sweep's


def test_only_the_devices_a_shipped_profile_describes_get_its_figures():
    import pytest

    from s2vbench.bench.ground import ground_record
    from s2vbench.bench.profiles import profile_for_device

    described = {"NVIDIA H200": "h200", "NVIDIA H100 80GB HBM3": "h100-sxm", "NVIDIA A100-SXM4-80GB": "a100-80gb"}
    for name, profile in described.items():
        assert profile_for_device(name) == profile
    # other peaks, bandwidths or capacities: none is passed off as a shipped part (all were before)
    for name in ("NVIDIA H100 PCIe", "NVIDIA H100 NVL", "NVIDIA H200 NVL", "NVIDIA GH200 480GB",
                 "NVIDIA A100-SXM4-40GB", "NVIDIA A100 80GB PCIe", "NVIDIA B200", "NVIDIA L40S", "cpu", None):
        assert profile_for_device(name) is None, name
    point = ground_points(world=8, on_gpu=True)[0]
    result = {"times": [2.0, 2.2, 2.1], "device_name": "NVIDIA H100 80GB HBM3"}
    rec = ground_record(point, result)
    assert rec.config["hardware_profile"] == "h100-sxm"
    grounded = rec.metric("grounded_14b_step_time")
    assert grounded.status == "predicted" and grounded.value > 2.1 and "h100-sxm" in grounded.how
    pcie = ground_record(point, {**result, "device_name": "NVIDIA H100 PCIe"})
    assert pcie.metric("grounded_14b_step_time").status == "not_measured"
    assert pcie.metric("rank0_compute_time").value == pytest.approx(2.1)
    chosen = ground_record(point, {**result, "device_name": "NVIDIA H100 PCIe"}, hw_name="h200")
    assert chosen.config["hardware_profile"] == "h200" and chosen.metric("model_14b_step_time").value > 0
