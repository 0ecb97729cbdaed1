"""The results schema: environment capture, atomic incremental writes, honest metrics."""

import json
import os

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


def _file(path, records):
    path.write_text(json.dumps({"schema": R.SCHEMA, "schema_version": R.SCHEMA_VERSION, "records": records}))
    return path


GOOD = {"kind": "test", "name": "a", "config": {}, "metrics": [{"name": "step_time", "value": 1.0, "unit": "s",
                                                                 "how": "t", "status": "measured", "stats": {}}]}


@pytest.mark.parametrize("records, match", [
    ([{"kind": "iteration"}], r"record 0: missing field\(s\) \['name', 'config', 'metrics'\]"),  # were TypeErrors
    ([{**GOOD, "extra_field": 1}], r"record 0: unknown field\(s\) \['extra_field'\]"),
    (["abc"], "record 0 is a JSON str, not an object"),
    ([{**GOOD, "config": "x"}], "config = 'x' must be an object"),
    ([{**GOOD, "tags": [1]}], "tags = \\[1\\] must be a list of strings"),
    ([{**GOOD, "metrics": [{**GOOD["metrics"][0], "value": "fast"}]}],
     r"record 0 \('a'\), metric 0 \('step_time'\): value = 'fast' must be a number"),  # crashed the report
    ([{**GOOD, "metrics": [{**GOOD["metrics"][0], "status": "guess"}]}], "status 'guess' is not one of"),
    ([{**GOOD, "metrics": [{"name": "x"}]}], r"missing field\(s\) \['value', 'unit', 'how'\]"),
    ("abc", "has no list of records \\('records' is str\\)"),
])
def test_malformed_records_name_the_file_and_field(tmp_path, records, match):
    path = _file(tmp_path / "r.json", records)
    with pytest.raises(R.ResultsError, match=match) as info:
        R.read_results(path)
    assert str(path) in str(info.value)


def test_missing_records_and_folders_are_named(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"schema": R.SCHEMA, "schema_version": R.SCHEMA_VERSION}))
    with pytest.raises(R.ResultsError, match="'records' is missing"):  # was a KeyError
        R.read_results(p)
    with pytest.raises(R.ResultsError, match="is a folder"):
        R.read_results(tmp_path)


def test_non_finite_figures_read_back_as_floats(tmp_path):
    log = R.ResultsLog(tmp_path / "r.json", environment={})
    log.append(R.Record("test", "a", {}, [R.Metric("x", float("nan"), "s", "t", stats={"max": float("inf")})]))
    (rec,) = R.read_results(log.path)  # to_jsonable wrote them as "nan" and "inf"
    m = rec.metric("x")
    assert m.value != m.value and m.stats["max"] == float("inf")


@pytest.mark.parametrize("resume", [True, False])
def test_a_corrupt_results_file_is_never_overwritten(tmp_path, resume):
    path = tmp_path / "results.json"
    good = _file(path, [GOOD]).read_text()
    path.write_text(good[: len(good) // 2])  # cut short
    with pytest.raises(R.ResultsError, match="not valid JSON.*left untouched"):
        R.ResultsLog(path, environment={}, resume=resume)  # resume=False used to overwrite it silently
    assert path.read_text() == good[: len(good) // 2]
    _file(path, [GOOD])
    log = R.ResultsLog(path, environment={}, resume=resume)  # a readable file: resumed, or replaced on request
    assert [r.name for r in log.records] == (["a"] if resume else [])


def test_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    import stat

    path = tmp_path / "results.json"
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        calls.append(("fsync", "dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        return real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", os.stat(src).st_ino, str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(R.os, "fsync", fsync)
    monkeypatch.setattr(R.os, "replace", replace)
    R.atomic_write_text(path, "x\n")
    ino = path.stat().st_ino
    # the new data reaches the disk before it is renamed into place, and the rename itself after
    assert calls == [("fsync", "file", ino), ("replace", ino, str(path)), ("fsync", "dir", tmp_path.stat().st_ino)]


def test_written_files_have_ordinary_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    path = tmp_path / "results.json"
    R.atomic_write_text(path, "x\n")
    # mkstemp makes 0600; results are ordinary files other users (and CI) can read
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_records_own_environment_is_kept(tmp_path):
    log = R.ResultsLog(tmp_path / "r.json", environment={"host": "h"})
    own = record("a")
    own.environment = {"host": "x", "device": "d"}
    log.append(own)
    log.append(record("b"))
    a, b = R.read_results(log.path)
    # the log's environment is only for records that have none
    assert a.environment == {"host": "x", "device": "d"} and b.environment == {"host": "h"}


def test_a_figure_is_saved_whole_or_not_at_all(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from s2vbench.bench.results import atomic_save_figure

    path = tmp_path / "plot.png"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    atomic_save_figure(fig, path, dpi=50)
    old = path.read_bytes()
    assert old.startswith(b"\x89PNG")

    class Broken:  # a figure whose drawing fails part way, as savefig into the file itself would leave it
        def savefig(self, buf, **kw):
            buf.write(b"\x89PNG half")
            raise RuntimeError("renderer failed")

    with pytest.raises(RuntimeError, match="renderer failed"):
        atomic_save_figure(Broken(), path)
    assert path.read_bytes() == old and sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]
    plt.close(fig)
