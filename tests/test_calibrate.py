"""Calibration fits and leave-one-out validation, on synthetic data with known answers, and one real run."""

from __future__ import annotations

import pytest

from s2vbench.bench.calibrate import (
    calibrate_cpu,
    collective_samples,
    fit_link,
    fit_skew,
    predict_record,
    step_noise,
    validate,
)
from s2vbench.bench.points import Point
from s2vbench.bench.profiles import load_profile
from s2vbench.bench.results import Metric, Record


def test_fit_link_recovers_alpha_and_beta():
    alpha, beta, world = 50e-6, 2e9, 2
    samples = []
    for nbytes in (2 ** 12, 2 ** 16, 2 ** 20, 2 ** 24):
        samples.append(("all_gather", nbytes, (world - 1) * alpha + (world - 1) / world * nbytes / beta))
        samples.append(("p2p", nbytes, alpha + nbytes / beta))
    link, rms = fit_link(samples, world)
    assert link.latency == pytest.approx(alpha, rel=1e-6)
    assert link.bandwidth == pytest.approx(beta, rel=1e-6)
    assert rms < 1e-9


def test_fit_skew_recovers_the_wait_per_second_of_compute():
    skew, c = 0.12, 1.5e-3
    samples = [(w, c + skew * w) for w in (2e-3, 8e-3, 3e-2, 0.12)]
    fitted, intercept = fit_skew(samples)
    assert fitted == pytest.approx(skew, rel=1e-6) and intercept == pytest.approx(c, rel=1e-6)
    # the collective sweep's samples lose the skew their preceding compute brought (half for a p2p round trip)
    raw = {"collectives": [("all_gather", 1024, 2e-3, 1e-3 + skew * 2e-3), ("p2p", 1024, 2e-3, 1e-3 + skew * 1e-3)]}
    assert [t for _, _, t in collective_samples(raw, skew)] == pytest.approx([1e-3, 1e-3])
    # ranks that never drift apart: no skew, never a negative one
    assert fit_skew([(w, 1e-3) for w in (2e-3, 8e-3, 3e-2)])[0] == pytest.approx(0.0, abs=1e-9)
    assert fit_skew([(w, 5e-3 - 0.01 * w) for w in (2e-3, 8e-3, 3e-2)])[0] == 0.0


def _record(point: Point, steps: list[float], compute: float | None = None) -> Record:
    from s2vbench.model import get_preset

    cfg = point.to_dict()
    cfg["clip"] = point.clip().__dict__
    cfg["model"] = get_preset(point.preset).model.__dict__
    stats = {f"step{i}": t for i, t in enumerate(steps)}
    sorted_steps = sorted(steps)
    metrics = [Metric("step_time", sorted_steps[len(steps) // 2], "s", "test", stats=stats)]
    if compute is not None:
        metrics.append(Metric("compute_time", compute, "s", "test"))
    return Record("iteration", point.name, cfg, metrics)


def test_leave_one_out_fits_on_compute_only_times_and_skips_noisy_points():
    hw = load_profile("h100-sxm")
    points = [Point("tiny", 1, "single", global_batch=1), Point("small", 1, "single", global_batch=1),
              Point("small", 2, "ulysses"), Point("small", 2, "fsdp")]
    records = []
    for p in points:
        pred = predict_record(_record(p, [1.0] * 3), hw)
        compute = pred.time - pred.exposed_comm + 2 * pred.elementwise  # elementwise runs 3x slower than modelled
        comm = 0.0 if p.world == 1 else 0.7  # communication the model misses, seen only in the step time
        records.append(_record(p, [compute + pred.exposed_comm + comm] * 3,
                               compute=None if p.world == 1 else compute))
    noisy_point = Point("small", 2, "ring")
    model = predict_record(_record(noisy_point, [1.0] * 3), hw).time
    records.append(_record(noisy_point, [model, model * 1.5, model * 3]))
    rows, summary = validate(records, hw)
    assert summary["counted"] == 4 and summary["points"] == 5
    # the factor comes from compute-only times: the missed communication does not leak into it
    assert summary["elementwise_factor"] == pytest.approx(3.0, rel=1e-6)
    for row in rows[:4]:
        assert row.loo - row.comm_model == pytest.approx(row.compute_measured, rel=1e-6)
        assert row.error == pytest.approx(0.0 if "single" in row.name else -0.7 / row.measured, abs=1e-6)
    noisy = next(r for r in rows if r.name == noisy_point.name)
    assert not noisy.counted and step_noise(records[-1]) > 0.05
    # a model error shows: double one measurement and its leave-one-out error is about -50%
    records[0] = _record(points[0], [2 * (records[0].metric("step_time").value)] * 3)
    rows, summary = validate(records, hw)
    assert summary["time_max_abs_error"] > 0.3


def test_cpu_calibration_measures_every_figure():
    prof, raw = calibrate_cpu()
    assert prof.peak_flops > 1e8 and prof.memory_bandwidth > 1e8 and 0 < prof.op_overhead < 1e-3
    assert 0 < prof.op_overhead_sharded < 1e-3 and 0 <= prof.rank_skew < 1
    work = [w for w, _ in raw["skew_samples"]]
    assert len(work) == 4 and work == sorted(work) and work[-1] > 10 * work[0]
    assert prof.attention_backward is not None and not prof.comm_overlaps_compute
    assert prof.intra_node.bandwidth > 1e6 and prof.intra_node.latency > 0
    assert all(0 < e <= 1.5 for e in prof.matmul.efficiency)
    assert {k for k, _, _ in raw["collectives"]} == {"all_gather", "reduce_scatter", "all_to_all", "p2p"}
    assert all(v.startswith(("measured", "the same", "memory", "os.", "by construction")) for v in prof.sources.values())


def test_calibrate_and_validate_writes_profile_and_report_section(tmp_path, monkeypatch):
    import json

    import s2vbench.bench.calibrate as cal
    from s2vbench.bench.profiles import HardwareProfile

    monkeypatch.setattr(cal, "validation_points", lambda: [Point("tiny", 1, "single", global_batch=1, steps=3)])
    section = cal.calibrate_and_validate(tmp_path, [], progress=False)
    assert "## Performance model: calibration and validation" in section
    assert "tiny/single/w1" in section and "Saved activations" in section
    doc = json.loads((tmp_path / "calibration.json").read_text())
    prof = HardwareProfile.from_dict(doc["profile"])
    assert prof.name == "cpu-gloo" and prof.op_overhead > 0 and prof.elementwise_factor >= 0
    assert doc["summary"]["points"] == 1
    # a re-run resumes the validation points instead of timing them again
    before = (tmp_path / "validation.json").read_text()
    cal.calibrate_and_validate(tmp_path, [], progress=False)
    assert json.loads((tmp_path / "validation.json").read_text())["records"] == json.loads(before)["records"]


def test_leave_one_out_recovers_an_elementwise_factor():
    hw = load_profile("h100-sxm")
    points = [Point("tiny", 1, "single", global_batch=1), Point("small", 1, "single", global_batch=1),
              Point("small", 1, "single", global_batch=2), Point("small", 1, "single", global_batch=1, frames=16)]
    records = []
    for p in points:
        pred = predict_record(_record(p, [1.0] * 3), hw)
        # measured = model + the elementwise part twice more (a factor of 3 on it), noiseless
        records.append(_record(p, [pred.time + 2 * pred.elementwise] * 3))
    _, summary = validate(records, hw)
    assert summary["counted"] == 4
    assert summary["elementwise_factor"] == pytest.approx(3.0, rel=1e-6)
    assert summary["time_max_abs_error"] == pytest.approx(0.0, abs=1e-9)
