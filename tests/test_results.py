"""The results schema: environment capture, atomic incremental writes, honest metrics."""

import json

import pytest

from s2vbench.bench import results as R


def record(name, value=1.5):
    return R.Record(kind="test", name=name, config={"preset": "tiny", "dims": (1, 2)},
                    metrics=[R.Metric("step_time", value, "s", "perf_counter, median of 3, warm-up excluded")])


def test_environment_has_the_versions():
    env = R.capture_environment()
    for key in ("host", "device", "driver", "cuda", "torch", "triton", "deepspeed", "git_commit", "python"):
        assert key in env
    assert env["torch"]


def test_log_appends_atomically_and_resumes(tmp_path):
    path = tmp_path / "out" / "results.json"
    log = R.ResultsLog(path, environment={"host": "h"})
    log.append(record("a"))
    doc = json.loads(path.read_text())
    assert doc["schema"] == R.SCHEMA and doc["schema_version"] == R.SCHEMA_VERSION
    assert [r["name"] for r in doc["records"]] == ["a"]
    assert doc["records"][0]["config"]["dims"] == [1, 2] and doc["records"][0]["environment"] == {"host": "h"}
    again = R.ResultsLog(path, environment={"host": "h"})
    assert again.done("a") and not again.done("b")
    again.append(record("b"))
    got = R.read_results(path)
    assert [r.name for r in got] == ["a", "b"] and got[1].metric("step_time").unit == "s"
    assert list(tmp_path.joinpath("out").iterdir()) == [path]  # no temp files left behind


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    log = R.ResultsLog(path, environment={})
    log.append(record("a"))
    before = path.read_text()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(R.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        log.append(record("b"))
    assert path.read_text() == before
    assert list(tmp_path.iterdir()) == [path]


def test_metric_honesty_rules():
    with pytest.raises(R.ResultsError, match="not_measured but has a value"):
        R.Metric("tflops", 1.0, "TFLOP/s", "n/a", status="not_measured")
    with pytest.raises(R.ResultsError, match="mark it status='not_measured'"):
        R.Metric("tflops", None, "TFLOP/s", "n/a")
    assert R.Metric("tflops", None, "TFLOP/s", "needs CUDA", status="not_measured").value is None


def test_bad_files_are_refused(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{")
    with pytest.raises(R.ResultsError, match="not valid JSON"):
        R.read_results(p)
    p.write_text(json.dumps({"schema": R.SCHEMA, "schema_version": 999, "records": []}))
    with pytest.raises(R.ResultsError, match="schema_version 999"):
        R.read_results(p)
