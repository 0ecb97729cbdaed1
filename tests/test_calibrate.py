"""Calibration fits and leave-one-out validation, on synthetic data with known answers, and one real run."""

from __future__ import annotations

import statistics

import pytest

from s2vbench.bench.calibrate import (
    _reduce_repeats,
    calibrate_cpu,
    collective_samples,
    fit_link,
    fit_skew,
    predict_record,
    step_noise,
    validate,
)
from s2vbench.bench.points import Point
from s2vbench.bench.perfmodel import collective_time
from s2vbench.bench.profiles import HardwareProfile, Link, ProfileError, load_profile
from s2vbench.bench.results import Metric, Record


def test_fit_link_recovers_alpha_and_beta():
    alpha, beta, world = 50e-6, 2e9, 2
    samples = []
    for nbytes in (2 ** 12, 2 ** 16, 2 ** 20, 2 ** 24):
        samples.append(("all_gather", nbytes, (world - 1) * alpha + (world - 1) / world * nbytes / beta))
        samples.append(("p2p", nbytes, alpha + nbytes / beta))
    link, residual = fit_link(samples, world)
    assert link.latency == pytest.approx(alpha, rel=1e-6)
    assert link.bandwidth == pytest.approx(beta, rel=1e-6)
    assert residual["pooled"] < 1e-9 and residual["per_kind"] < 1e-9


def test_fit_link_prices_each_kind_on_its_own():
    world = 4
    truth = {"all_gather": (4e9, 1e-4), "reduce_scatter": (2e9, 3e-4), "all_to_all": (3e9, 5e-5),
             "p2p": (8e9, 2e-5)}
    samples = []
    for kind, (bw, lat) in truth.items():
        for nbytes in (2 ** 14, 2 ** 18, 2 ** 21, 2 ** 23):
            samples.append((kind, nbytes, collective_time(kind, nbytes, world, Link(bw, lat))))
    link, residual = fit_link(samples, world)
    for kind, (bw, lat) in truth.items():
        assert link.cost(kind) == pytest.approx((bw, lat), rel=1e-6)
        # the model charges each kind what was measured for it
        assert collective_time(kind, 2 ** 20, world, link) == pytest.approx(
            collective_time(kind, 2 ** 20, world, Link(bw, lat)), rel=1e-6)
    # one pooled pair cannot fit four different kinds; a kind not measured costs the pooled pair
    assert residual["per_kind"] < 1e-6 < 0.1 < residual["pooled"]
    assert link.cost("all_reduce") == (link.bandwidth, link.latency)
    # a noisy kind whose intercept would come out negative is fitted by its bandwidth term alone, not clamped
    noisy = [("p2p", n, n / 1e9 * (0.5 if n == 2 ** 14 else 1.0)) for n in (2 ** 14, 2 ** 18, 2 ** 21, 2 ** 23)]
    bw, lat = fit_link(noisy, world)[0].cost("p2p")
    # with alpha 0, k = 1e9 / bw minimizes (2k - 1)^2 + 3 (k - 1)^2 over the relative errors: k = 5/7
    assert lat == 0.0 and bw == pytest.approx(1e9 * 7 / 5, rel=1e-6)


def test_link_kind_costs_survive_a_json_round_trip(tmp_path):
    hw = load_profile("h100-sxm")
    link = Link(2e9, 1e-4, {"p2p": (8e9, 2e-5), "all_reduce": (3e9, 5e-5)})
    prof = HardwareProfile(**{**hw.__dict__, "intra_node": link})
    back = load_profile(prof.save(tmp_path / "p.json"))
    assert back == prof and back.intra_node.cost("p2p") == (8e9, 2e-5)
    # a kind's pair prices the whole collective: a measured all_reduce is charged once, the pooled pair twice
    p, n = 4, 2 ** 20
    assert collective_time("all_reduce", n, p, link) == pytest.approx(3 * 5e-5 + 3 / 4 * n / 3e9)
    assert collective_time("all_reduce", n, p, Link(2e9, 1e-4)) == pytest.approx(2 * (3 * 1e-4 + 3 / 4 * n / 2e9))


def test_fit_link_rejects_samples_it_cannot_fit():
    with pytest.raises(ValueError, match="seconds > 0"):
        fit_link([("p2p", 1024, 0.0), ("p2p", 2048, 1e-3)], 2)
    with pytest.raises(ValueError, match="got none"):
        fit_link([], 2)


def test_link_rejects_malformed_kind_costs():
    with pytest.raises(ProfileError, match="unknown collective kind 'broadcast'"):
        Link(1e9, 1e-5, {"broadcast": (1e9, 1e-5)})
    with pytest.raises(ProfileError, match="bandwidth bytes/s > 0"):
        Link(1e9, 1e-5, {"p2p": (0.0, 1e-5)})
    with pytest.raises(ProfileError, match="positive bandwidth"):
        Link(-1.0, 1e-5)
    with pytest.raises(ProfileError, match="bandwidth bytes/s > 0"):
        Link(1e9, 1e-5, {"p2p": 5})


def test_calibration_rounds_combine_figure_by_figure():
    rounds = [{"matmul": [(1e6, 10.0), (1e7, 20.0)], "loaded_collectives": [("p2p", 1024, 1e-3, t)],
               "memory_bandwidth": bw} for t, bw in ((1.0, 5.0), (3.0, 1.0), (2.0, 9.0))]
    median = _reduce_repeats(rounds, statistics.median)
    assert median == {"matmul": [(1e6, 10.0), (1e7, 20.0)], "loaded_collectives": [("p2p", 1024, 1e-3, 2.0)],
                      "memory_bandwidth": 5.0}
    # rounds that measured different things are not combined, and the error says where they differ
    with pytest.raises(ValueError, match=r"rounds.matmul: .*different numbers of samples"):
        _reduce_repeats([{"matmul": [(1e6, 1.0)]}, {"matmul": [(1e6, 1.0), (1e7, 2.0)]}], statistics.median, "rounds")
    with pytest.raises(ValueError, match=r"rounds.loaded\[0\]\[1\]: .*different labels"):
        _reduce_repeats([{"loaded": [("p2p", 1024, 1.0)]}, {"loaded": [("p2p", 2048, 3.0)]}], statistics.median,
                        "rounds")
    with pytest.raises(ValueError, match="different figures"):
        _reduce_repeats([{"a": 1.0}, {"b": 1.0}], statistics.median)
    with pytest.raises(ValueError, match="positive integer"):
        calibrate_cpu(rounds=0)


def test_fit_skew_recovers_the_wait_per_second_of_compute():
    skew, c = 0.12, 1.5e-3
    samples = [(w, c + skew * w) for w in (2e-3, 8e-3, 3e-2, 0.12)]
    fitted, intercept = fit_skew(samples)
    assert fitted == pytest.approx(skew, rel=1e-6) and intercept == pytest.approx(c, rel=1e-6)
    # the collective sweep's samples lose the skew their preceding compute brought (half for a p2p round trip)
    loaded = [("all_gather", 1024, 2e-3, 1e-3 + skew * 2e-3), ("p2p", 1024, 2e-3, 1e-3 + skew * 1e-3)]
    assert [t for _, _, t in collective_samples(loaded, skew)] == pytest.approx([1e-3, 1e-3])
    # ranks that never drift apart: no skew, never a negative one
    assert fit_skew([(w, 1e-3) for w in (2e-3, 8e-3, 3e-2)])[0] == pytest.approx(0.0, abs=1e-9)
    assert fit_skew([(w, 5e-3 - 0.01 * w) for w in (2e-3, 8e-3, 3e-2)])[0] == 0.0


def _record(point: Point, steps: list[float], compute: float | None = None,
            inference: list[float] | None = None) -> Record:
    from s2vbench.model import get_preset

    cfg = point.to_dict()
    cfg["clip"] = point.clip().__dict__
    cfg["model"] = get_preset(point.preset).model.__dict__
    stats = {f"step{i}": t for i, t in enumerate(steps)}
    sorted_steps = sorted(steps)
    metrics = [Metric("step_time", sorted_steps[len(steps) // 2], "s", "test", stats=stats)]
    if compute is not None:
        metrics.append(Metric("compute_time", compute, "s", "test"))
    if inference is not None:
        metrics.append(Metric("inference_step_time", sorted(inference)[len(inference) // 2], "s", "test",
                              stats={f"step{i}": t for i, t in enumerate(inference)}))
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
    prof, raw = calibrate_cpu(rounds=1)
    assert prof.peak_flops > 1e8 and prof.memory_bandwidth > 1e8 and 0 < prof.op_overhead < 1e-3
    assert prof.elementwise_bandwidth > 1e8 and "elementwise chain" in prof.sources["elementwise_bandwidth"]
    assert 0 < prof.op_overhead_sharded < 1e-3 and 0 <= prof.rank_skew < 1
    work = [w for w, _ in raw["skew_samples"]]
    assert len(work) == 4 and work == sorted(work) and work[-1] > 10 * work[0]
    assert prof.attention_backward is not None and not prof.comm_overlaps_compute
    assert prof.intra_node.bandwidth > 1e6 and prof.intra_node.latency >= 0
    assert set(prof.intra_node.kinds) == {"all_gather", "reduce_scatter", "all_to_all", "p2p"}
    assert len(raw["rounds"]) == 1 and set(raw["rounds"][0]) >= {"op_overhead", "rank_skew", "latency_p2p"}
    assert all(0 < e <= 1.5 for e in prof.matmul.efficiency)
    assert {k for k, _, _ in raw["collectives"]} == {"all_gather", "reduce_scatter", "all_to_all", "p2p"}
    assert all(v.startswith(("measured", "the same", "memory", "os.", "by construction")) for v in prof.sources.values())


def test_calibrate_and_validate_writes_profile_and_report_section(tmp_path, monkeypatch):
    import json

    import s2vbench.bench.calibrate as cal

    monkeypatch.setattr(cal, "validation_points", lambda: [Point("tiny", 1, "single", global_batch=1, steps=3)])
    section = cal.calibrate_and_validate(tmp_path, [], progress=False, rounds=1)
    assert "## Performance model: calibration and validation" in section
    assert "tiny/single/w1" in section and "Saved activations" in section
    doc = json.loads((tmp_path / "calibration.json").read_text())
    prof = HardwareProfile.from_dict(doc["profile"])
    assert prof.name == "cpu-gloo" and prof.op_overhead > 0 and prof.elementwise_factor >= 0
    assert doc["summary"]["points"] == 1
    # the memory check: the model's peak per rank against the storage the step held, tracked op by op
    assert "peak memory per rank" in section and doc["summary"]["peak_memory_max_abs_error"] < 0.1, doc["summary"]
    # the run's calibration.json is itself a profile `predict --hw` takes
    assert load_profile(tmp_path / "calibration.json") == prof
    # a re-run resumes the validation points instead of timing them again
    before = (tmp_path / "validation.json").read_text()
    cal.calibrate_and_validate(tmp_path, [], progress=False, rounds=1)
    assert json.loads((tmp_path / "validation.json").read_text())["records"] == json.loads(before)["records"]


def test_leave_one_out_recovers_an_elementwise_factor():
    hw = load_profile("h100-sxm")
    points = [Point("tiny", 1, "single", global_batch=1), Point("small", 1, "single", global_batch=1),
              Point("small", 1, "single", global_batch=2), Point("small", 1, "single", global_batch=1, frames=16)]
    records, misses = [], []
    for p in points:
        pred = predict_record(_record(p, [1.0] * 3), hw)
        # measured = model + the elementwise part twice more (a factor of 3 on it), noiseless
        records.append(_record(p, [pred.time + 2 * pred.elementwise] * 3))
        misses.append(2 * pred.elementwise / (pred.time + 2 * pred.elementwise))
    _, summary = validate(records, hw)
    assert summary["counted"] == 4
    assert summary["elementwise_factor"] == pytest.approx(3.0, rel=1e-6)
    assert summary["time_max_abs_error"] == pytest.approx(0.0, abs=1e-9)
    # without the fitted factor the microbenchmarks alone miss each point by its elementwise share
    assert summary["unfitted_max_abs_error"] == pytest.approx(max(misses), rel=1e-6) and max(misses) > 0.01


def _synthetic_round(scale: float) -> dict:
    """One calibration round's samples, as ``_measure_round`` returns them, every rate times ``scale``."""
    sizes = (2 ** 14, 2 ** 18, 2 ** 21, 2 ** 23)
    return {"matmul": [(1e6, 5e10 * scale), (1e9, 9e10 * scale)], "attention": [(1e7, 6e10 * scale)],
            "attention_backward": [(1e7, 5e10 * scale)], "memory_bandwidth": 2e10 * scale,
            "elementwise_bandwidth": 1e10 * scale,
            "skew_samples": [(w, 1e-3 + 0.05 * w) for w in (2e-3, 8e-3, 3e-2, 0.12)],
            "loaded_collectives": [(k, n, 2e-3, 1e-3 + 0.05 * 2e-3 + n / 1e9 / scale)
                                   for k in ("all_gather", "reduce_scatter", "all_to_all", "p2p") for n in sizes],
            "op_overhead": 7e-6, "op_overhead_sharded": 14e-6}


def test_interrupted_calibration_resumes_from_its_finished_rounds(tmp_path, monkeypatch):
    import json

    import s2vbench.bench.calibrate as cal

    calls = []

    def measure(world, timeout_s):
        calls.append(world)
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed during the second round
        return _synthetic_round(float(len(calls)))

    monkeypatch.setattr(cal, "_measure_round", measure)
    checkpoint = tmp_path / "calibration_rounds.json"
    with pytest.raises(KeyboardInterrupt):
        cal.calibrate_cpu(rounds=3, checkpoint=checkpoint)
    assert len(json.loads(checkpoint.read_text())["rounds"]) == 1  # the finished round was kept
    prof, raw = cal.calibrate_cpu(rounds=3, checkpoint=checkpoint)
    assert len(calls) == 4 and len(raw["rounds"]) == 3  # two more rounds measured, not three
    assert prof.memory_bandwidth == pytest.approx(2e10 * 3)  # the median of the rounds' 1x, 3x and 4x
    assert prof.elementwise_rate == pytest.approx(1e10 * 3)
    assert prof.op_overhead == 7e-6 and prof.op_overhead_sharded == 14e-6
    assert prof.rank_skew == pytest.approx(0.05) and "medians over 3 rounds" in prof.sources["rank_skew"]
    spread = "\n".join(cal._spread_lines(raw["rounds"]))
    assert "ran 3 independent rounds" in spread
    row = next(line for line in spread.splitlines() if "memory_bandwidth" in line)
    assert [c.strip() for c in row.strip("|").split("|")][1:] == ["GB/s", "60", "20", "80", "100%"]
    # a finished calibration re-run measures nothing; a checkpoint of another world size is refused
    cal.calibrate_cpu(rounds=3, checkpoint=checkpoint)
    assert len(calls) == 4
    with pytest.raises(cal.CalibrationError, match="delete it"):
        cal.calibrate_cpu(world=4, rounds=3, checkpoint=checkpoint)
    # ... and so is one whose rounds measured another set of figures (an older s2vbench's)
    doc = json.loads(checkpoint.read_text())
    doc["key"]["round_format"] = cal.ROUND_FORMAT - 1
    checkpoint.write_text(json.dumps(doc))
    with pytest.raises(cal.CalibrationError, match="delete it"):
        cal.calibrate_cpu(rounds=3, checkpoint=checkpoint)
    # ... and so is one from another machine
    doc = json.loads(checkpoint.read_text())
    doc["key"]["host"] = "elsewhere"
    checkpoint.write_text(json.dumps(doc))
    with pytest.raises(cal.CalibrationError, match="this machine"):
        cal.calibrate_cpu(rounds=3, checkpoint=checkpoint)


def test_calibration_rounds_after_the_first_start_only_while_they_fit_the_deadline(tmp_path, monkeypatch):
    import s2vbench.bench.calibrate as cal

    clock = [100.0]
    lengths = iter([40.0, 60.0, 10.0])  # seconds each round takes on the fake clock

    def measure(world, timeout_s):
        clock[0] += next(lengths)
        return _synthetic_round(1.0)

    monkeypatch.setattr(cal, "_measure_round", measure)
    monkeypatch.setattr(cal.time, "monotonic", lambda: clock[0])
    # rounds end at 140 and 200; a third, at the 60 s the longest took, would end at 260 > 250
    prof, raw = cal.calibrate_cpu(rounds=3, deadline=250.0)
    assert len(raw["rounds"]) == 2 and clock[0] == 200.0
    assert raw["rounds_cut"].startswith("2 of the 3 rounds") and "60 s" in raw["rounds_cut"]
    assert "medians over 2 rounds" in prof.sources["rank_skew"]
    section = cal.calibration_markdown(prof, raw, [], {"points": 0, "counted": 0, "time_mean_abs_error": None,
                                                       "time_max_abs_error": None, "unfitted_mean_abs_error": None,
                                                       "unfitted_max_abs_error": None, "memory_mean_abs_error": None,
                                                       "memory_max_abs_error": None, "elementwise_factor": 1.0})
    assert "ran 2 independent rounds" in section and "stopped at 2 of the 3 rounds" in section
    # a deadline already past still gets the one round a profile needs; no deadline runs them all
    clock[0], lengths = 1000.0, iter([5.0, 5.0, 5.0])
    _, raw = cal.calibrate_cpu(rounds=3, deadline=0.0)
    assert len(raw["rounds"]) == 1 and raw["rounds_cut"].startswith("1 of the 3")
    # rounds resumed from a checkpoint, none measured in this call: past the deadline nothing more starts
    checkpoint = tmp_path / "rounds.json"
    lengths = iter([5.0, 5.0, 5.0])
    cal.calibrate_cpu(rounds=2, checkpoint=checkpoint)
    lengths = iter([])
    _, raw = cal.calibrate_cpu(rounds=3, checkpoint=checkpoint, deadline=0.0)
    assert len(raw["rounds"]) == 2 and raw["rounds_cut"].endswith("would have started after the run's time budget")
    lengths = iter([5.0, 5.0, 5.0])
    _, raw = cal.calibrate_cpu(rounds=3)
    assert len(raw["rounds"]) == 3 and raw["rounds_cut"] is None


def test_one_rank_inference_is_validated_beside_training():
    from s2vbench.bench.calibrate import predict_inference_record

    hw = load_profile("h100-sxm")
    points = [Point("tiny", 1, "single", global_batch=1, inference=True),
              Point("small", 1, "single", global_batch=2, inference=True), Point("small", 2, "ulysses", inference=True)]
    records = []
    for p in points:
        probe = _record(p, [1.0] * 3)
        train, inf = predict_record(probe, hw), predict_inference_record(probe, hw)
        # both workloads' elementwise traffic runs 3x slower than modelled
        records.append(_record(p, [train.time + 2 * train.elementwise] * 3,
                               compute=None if p.world == 1 else train.time - train.exposed_comm + 2 * train.elementwise,
                               inference=[inf.time + 2 * inf.elementwise] * 5))
    rows, summary = validate(records, hw)
    names = [r.name for r in rows]
    # a CFG-step row for each one-rank record; none for the 2-rank one (its weights stay FSDP-sharded)
    assert names == [points[0].name, f"{points[0].name} (CFG step)", points[1].name, f"{points[1].name} (CFG step)",
                     points[2].name]
    assert summary["counted"] == 5 and summary["elementwise_factor"] == pytest.approx(3.0, rel=1e-6)
    assert all(abs(r.error) < 1e-6 for r in rows)
    # the CFG step of the batch-2 record is predicted for its 2 clips
    assert predict_inference_record(records[1], hw).model_flops == pytest.approx(
        2 * predict_inference_record(_record(Point("small", 1, "single", global_batch=1), [1.0]), hw).model_flops)
    # an inference model error shows in its row alone; noisy inference steps do not count
    records[0] = _record(points[0], [records[0].metric("step_time").value] * 3,
                         inference=[2 * records[0].metric("inference_step_time").value] * 5)
    rows, _ = validate(records, hw)
    assert rows[1].error == pytest.approx(-0.5, abs=0.02) and abs(rows[0].error) < 0.02
    records[0] = _record(points[0], [1.0] * 3, inference=[1.0, 1.5, 3.0, 1.0, 2.0])
    assert not validate(records, hw)[0][1].counted


def test_calibrate_checks_its_output_before_measuring(tmp_path, monkeypatch, capsys):
    import sys
    from pathlib import Path

    import s2vbench.bench.calibrate as cal
    from s2vbench.bench import cli

    monkeypatch.setattr(cal, "_measure_round", lambda *a: pytest.fail("measured before --out was checked"))
    monkeypatch.setattr(cal.torch.cuda, "is_available", lambda: False)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "p.raw.json").mkdir()
    cases = [(tmp_path, "is a folder"), (tmp_path / "afile" / "p.json", "is a file, not a folder"),
             (tmp_path / "p.json", "p.raw.json, written beside it, is a folder")]
    if sys.platform == "linux" and Path("/sys/kernel").is_dir():  # not writable even by root
        cases.append((Path("/sys/s2vbench-test/p.json"), "cannot write there"))
    for out, says in cases:
        assert cli.main(["calibrate", "--out", str(out), "--rounds", "1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("s2vbench calibrate: error: --out") and says in err, err
    assert not any(tmp_path.glob(".s2vbench-write-check-*"))  # the write check leaves nothing behind


def test_a_corrupt_checkpoint_is_refused_naming_it_and_kept(tmp_path, monkeypatch, capsys):
    import json

    import s2vbench.bench.calibrate as cal
    from s2vbench.bench import cli

    monkeypatch.setattr(cal, "_measure_round", lambda *a: pytest.fail("measured over a corrupt checkpoint"))
    checkpoint = tmp_path / "p.rounds.json"
    for text, says in (("garbage", "cannot be read"), (b"\xff\xfe", "cannot be read"),
                       (json.dumps([1, 2]), "is not one s2vbench wrote"),
                       (json.dumps({"key": {}, "rounds": [{}], "measured_utc": []}), "is not one s2vbench wrote")):
        checkpoint.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(cal.CalibrationError) as e:
            cal.calibrate_cpu(rounds=1, checkpoint=checkpoint)
        assert str(checkpoint) in str(e.value) and says in str(e.value) and "delete it" in str(e.value)
        assert checkpoint.exists()  # never discarded behind the user's back
    monkeypatch.setattr(cal.torch.cuda, "is_available", lambda: False)
    assert cli.main(["calibrate", "--out", str(tmp_path / "p.json"), "--rounds", "1"]) == 2
    err = capsys.readouterr().err
    assert f"calibration checkpoint {checkpoint}" in err and "Traceback" not in err


def _quick_calibration(monkeypatch):
    """`calibrate` on CPU with the measuring stubbed: what it was asked to checkpoint into, recorded."""
    import s2vbench.bench.calibrate as cal

    asked = {}

    def calibrate_cpu(rounds, checkpoint, progress):
        asked["checkpoint"] = checkpoint
        return load_profile("h100-sxm"), {"samples": []}

    monkeypatch.setattr(cal.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(cal, "calibrate_cpu", calibrate_cpu)
    return asked


def test_calibrate_checks_base_on_every_device(tmp_path, monkeypatch, capsys):
    from s2vbench.bench import cli
    from s2vbench.bench.profiles import PROFILE_DIR

    asked = _quick_calibration(monkeypatch)
    # on CPU --base goes unused, but a typo is refused there too, before measuring (was: ignored)
    assert cli.main(["calibrate", "--out", str(tmp_path / "p.json"), "--base", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("s2vbench calibrate: error: --base nope: no hardware profile 'nope'"), err
    assert "a100-80gb, h100-sxm, h200" in err and not asked and not any(tmp_path.iterdir())
    for base in ("h200", str(PROFILE_DIR / "a100-80gb.json")):  # a shipped name, or a profile's JSON
        assert cli.main(["calibrate", "--out", str(tmp_path / "p.json"), "--base", base]) == 0


@pytest.mark.parametrize("name, says", [
    ("c.toml", "its side files take their names from the name before .json (c.raw.json, c.rounds.json); pass a "
               "name ending in .json, e.g. "),
    ("c", "pass a name ending in .json"),
    ("c.raw.json", "that is the name of a side file of --out "),
    ("c.ROUNDS.json", "that is the name of a side file of --out "),
])
def test_calibrate_refuses_outputs_that_share_side_files(tmp_path, monkeypatch, capsys, name, says):
    from s2vbench.bench import cli

    asked = _quick_calibration(monkeypatch)
    # c.json's side files are c.raw.json and c.rounds.json: `--out c.toml` wrote the same two (was: accepted)
    assert cli.main(["calibrate", "--out", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"s2vbench calibrate: error: --out {tmp_path / name}: ") and says in err, err
    assert not asked and not any(tmp_path.iterdir())
    assert cli.main(["calibrate", "--out", str(tmp_path / "c.json")]) == 0  # the documented names
    assert asked["checkpoint"] == tmp_path / "c.rounds.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "c.raw.json"]
