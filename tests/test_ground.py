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
        assert r.metric("grounded_14b_step_time").status == "predicted"
        assert r.metric("peak_allocated").status == "not_measured"  # no CUDA here
    # a re-run resumes: nothing is repeated or lost
    run_ground(points, ResultsLog(tmp_path / "ground.json"), timeout_s=240)
    assert len(read_results(tmp_path / "ground.json")) == len(points)
