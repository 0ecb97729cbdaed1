"""A report regenerated into a run's folder keeps the run's calibration section (measurement stubbed: seconds)."""

from s2vbench.bench import cli
from s2vbench.bench.points import Point
from s2vbench.bench.report import CALIBRATION_SECTION, write_report
from s2vbench.bench.results import Metric, Record, ResultsLog

SECTION = "## Performance model: calibration and validation\n\nstub section: leave-one-out error 1.0%\n"


def _fake_sweep(points, results_path, timeout_s=1800.0, progress=True):
    """The points, each as a synthetic timed iteration record, without running them."""
    log = ResultsLog(results_path, environment={"device": "cpu", "cpu": "test-cpu"})
    for p in points:
        steps = [0.5, 0.52, 0.51]
        log.append(Record("iteration", p.name, {"world": p.world, "strategy": p.strategy, "preset": p.preset},
                          [Metric("step_time", 0.51, "s", "synthetic",
                                  stats={f"step{i}": t for i, t in enumerate(steps)}),
                           Metric("exposed_comm", 0.0, "s", "synthetic", stats={"share": 0.0})]))
    return log


def _stub_measuring(monkeypatch):
    """`run` and `calibrate_and_validate` as they are, around stubbed sweeps, calibration and validation."""
    import s2vbench.bench.calibrate as cal
    from s2vbench.bench import points, sweep
    from s2vbench.bench.profiles import load_profile

    monkeypatch.setattr(sweep, "run_sweep", _fake_sweep)
    monkeypatch.setattr(points, "default_cpu_points", lambda cores, preset: [Point(preset, 1, "single"),
                                                                             Point(preset, 2, "fsdp")])
    monkeypatch.setattr(cal, "calibrate_cpu", lambda **kw: (load_profile("h100-sxm"), {}))
    monkeypatch.setattr(cal, "validate", lambda records, hw: ([], {"elementwise_factor": 1.0}))
    monkeypatch.setattr(cal, "calibration_markdown", lambda *a: SECTION)


def test_report_into_the_run_folder_keeps_the_calibration_section(tmp_path, monkeypatch, capsys):
    _stub_measuring(monkeypatch)
    run = tmp_path / "run"
    assert cli.main(["run", "--preset", "tiny", "--out", str(run), "--quiet", "--calibration-rounds", "1"]) == 0
    assert (run / CALIBRATION_SECTION).read_text() == SECTION
    made = (run / "report.md").read_text()
    assert made.count(SECTION) == 1 and made.endswith(SECTION)
    # regenerated in place (was: overwritten without the section the run had appended)
    assert cli.main(["report", str(run / "results.json"), "--out", str(run), "--title", "again"]) == 0
    again = (run / "report.md").read_text()
    assert again.count(SECTION) == 1 and again.endswith(SECTION)

    def body(text):  # the same report as the run's, but for the title and the time it was made
        return [line for line in text.splitlines()[1:] if not line.startswith("Made ")]

    assert body(again) == body(made)


def test_a_report_elsewhere_has_no_calibration_section(tmp_path):
    run = tmp_path / "run"
    log = _fake_sweep([Point("tiny", 1, "single")], run / "results.json")
    (run / CALIBRATION_SECTION).write_text(SECTION)
    assert SECTION not in write_report([log.path], tmp_path / "other").read_text()
    assert write_report([log.path], run).read_text().endswith(SECTION)
