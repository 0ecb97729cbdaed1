"""s2vbench compare on synthetic noisy data: pass, fail, improvement, pytest-benchmark input."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from s2vbench.bench import cli
from s2vbench.bench.compare import bootstrap_median_ci, load_series, min_bootstrap_samples, run_compare
from s2vbench.bench.points import Point
from s2vbench.bench.results import Metric, Record, ResultsLog
from s2vbench.bench.sweep import failure_record


def results_file(path, scale, n=25, seed=0, device="cpu", host="runner-1", cpu_count=2, names=("a", "b"), extra=()):
    """Points ``names`` (1 s, 2 s, ... per step, 2% noise), then the records ``extra`` as they are."""
    rng = np.random.default_rng(seed)
    log = ResultsLog(path, environment={"device": device, "cpu": "test-cpu", "cpu_count": cpu_count, "host": host})
    for base, name in enumerate(names, 1):
        steps = (base * scale.get(name, 1.0) * (1 + 0.02 * rng.standard_normal(n))).tolist()
        log.append(Record("iteration", name, {}, [Metric("step_time", float(np.median(steps)), "s", "synthetic",
                                                         stats={f"step{i}": t for i, t in enumerate(steps)})]))
    log.extend(extra)
    return path


def test_same_distribution_passes(tmp_path, capsys):
    base = results_file(tmp_path / "base.json", {}, seed=0)
    new = results_file(tmp_path / "new.json", {}, seed=1)
    assert cli.main(["compare", str(base), str(new)]) == 0
    assert "0 regression(s) among 2 matched" in capsys.readouterr().out


def test_slowdown_fails_and_speedup_is_reported(tmp_path, capsys):
    base = results_file(tmp_path / "base.json", {}, seed=0)
    new = results_file(tmp_path / "new.json", {"a": 1.10, "b": 0.9}, seed=1)
    assert cli.main(["compare", str(base), str(new)]) == 1
    out = capsys.readouterr().out
    assert "regression" in out and "improvement" in out and "1 regression(s) among 2 matched" in out


def test_points_match_only_on_the_same_hardware(tmp_path, capsys):
    base = results_file(tmp_path / "base.json", {}, seed=0)
    new = results_file(tmp_path / "new.json", {"a": 2.0}, seed=1, device="NVIDIA H100")
    # nothing matched is nothing compared: an error (exit 2), not a pass a CI job would take for green
    assert cli.main(["compare", str(base), str(new)]) == 2
    out, err = capsys.readouterr()
    assert "unmatched" in out and "nothing was compared" in err and "regression" not in out


def test_runs_on_two_hosts_of_one_machine_type_match(tmp_path, capsys):
    # CI runners of one type differ in hostname only: their runs compare, those with other cores do not
    base = results_file(tmp_path / "base.json", {}, seed=0, host="runner-1")
    assert cli.main(["compare", str(base), str(results_file(tmp_path / "new.json", {}, seed=1, host="runner-2"))]) == 0
    assert "0 regression(s) among 2 matched" in capsys.readouterr().out
    fewer = results_file(tmp_path / "fewer.json", {}, seed=1, cpu_count=16)
    assert cli.main(["compare", str(base), str(fewer)]) == 2
    out = capsys.readouterr().out
    assert "unmatched" in out and "test-cpu x 2 cores" in out and "test-cpu x 16 cores" in out


FSDP = Point("small", 2, "fsdp")


@pytest.mark.parametrize("error, said", [
    (RuntimeError("rank 1 exited with code -9"), "OUT OF MEMORY in the new run"),
    (ValueError("shapes [2, 3] and [3, 4] do not match"), "FAILED in the new run"),
])
def test_a_point_that_failed_in_the_new_run_is_a_regression(tmp_path, capsys, error, said):
    # was "unmatched (config or hardware differs)" and exit 0: the failure record was skipped like a missing point
    base = results_file(tmp_path / "base.json", {}, seed=0, names=("a", FSDP.name))
    new = results_file(tmp_path / "new.json", {}, seed=1, names=("a",), extra=[failure_record(FSDP, error)])
    assert cli.main(["compare", str(base), str(new)]) == 1
    out = capsys.readouterr().out
    assert f"{said} (a regression): {FSDP.name} on test-cpu x 2 cores: " in out and str(error) in out
    assert "1 regression(s) among 2 matched point(s): 0 slower, 1 failed or out of memory" in out
    assert "unmatched" not in out
    # a new run that failed at every point is a run of regressions (exit 1), not an unreadable input (exit 2)
    all_failed = results_file(tmp_path / "all.json", {}, names=(), extra=[failure_record(FSDP, error)])
    assert cli.main(["compare", str(base), str(all_failed)]) == 1
    assert "2 regression(s) among 1 matched point(s) and 1 missing" in capsys.readouterr().out


def test_a_point_missing_from_the_new_run_fails_unless_allowed(tmp_path, capsys):
    other = Record("iteration", "c", {}, [Metric("step_time", 1.0, "s", "synthetic")],
                   environment={"device": "NVIDIA H100", "cpu": "test-cpu", "cpu_count": 2})
    base = results_file(tmp_path / "base.json", {}, seed=0, extra=[other])
    new = results_file(tmp_path / "new.json", {}, seed=1, names=("a",))
    assert cli.main(["compare", str(base), str(new)]) == 1
    out = capsys.readouterr().out
    assert "MISSING from the new run (a regression; --allow-missing permits it): b on test-cpu x 2 cores" in out
    assert "1 regression(s) among 1 matched point(s) and 1 missing" in out
    # a point of hardware the new run has no point on is not the new run's to have: listed, not missing
    assert "only in the baseline): c on NVIDIA H100 | test-cpu x 2 cores" in out and "MISSING" not in out.split(
        "only in the baseline")[1]
    assert cli.main(["compare", str(base), str(new), "--allow-missing"]) == 0
    assert "MISSING from the new run (allowed by --allow-missing): b" in capsys.readouterr().out


def test_untimed_points_are_judged_by_what_the_baseline_had(tmp_path, capsys):
    def untimed(name, how="oversubscribed: more ranks than cores"):
        return Record("iteration", name, {}, [Metric("step_time", None, "s", how, status="not_measured")],
                      tags=["oversubscribed"])

    # timed in the baseline, left untimed now: coverage lost, a regression unless missing points are allowed
    base = results_file(tmp_path / "base.json", {}, seed=0)
    new = results_file(tmp_path / "new.json", {}, seed=1, names=("a",), extra=[untimed("b")])
    assert cli.main(["compare", str(base), str(new)]) == 1
    assert "NOT TIMED in the new run (a regression; --allow-missing permits it): b on" in capsys.readouterr().out
    assert run_compare(base, new, allow_missing=True) == 0
    capsys.readouterr()
    # untimed in both, or failing in both: nothing changed, nothing judged
    base = results_file(tmp_path / "base2.json", {}, seed=0, names=("a",),
                        extra=[untimed("u"), failure_record(FSDP, RuntimeError("exited with code -9"))])
    new = results_file(tmp_path / "new2.json", {}, seed=1, names=("a",),
                       extra=[untimed("u"), failure_record(FSDP, RuntimeError("exited with code -9"))])
    assert cli.main(["compare", str(base), str(new)]) == 0
    out = capsys.readouterr().out
    assert "untimed in both runs (not judged): u on" in out and f"untimed in both runs (not judged): {FSDP.name}" in out
    # untimed in the baseline, failing now: it ran before, so the failure is new
    new = results_file(tmp_path / "new3.json", {}, seed=1, names=("a",),
                       extra=[failure_record(Point("small", 4, "usp"), RuntimeError("boom")), untimed(FSDP.name)])
    base = results_file(tmp_path / "base3.json", {}, seed=0, names=("a",),
                        extra=[untimed(Point("small", 4, "usp").name), untimed(FSDP.name)])
    assert cli.main(["compare", str(base), str(new)]) == 1
    assert "FAILED in the new run (a regression): small/usp" in capsys.readouterr().out


def _machine(node="runner-1", brand="AMD EPYC 7763 64-Core Processor", count=4, arch="x86_64", **extra):
    """machine_info as pytest-benchmark 5 writes it (py-cpuinfo's cpu, abridged)."""
    return {"node": node, "processor": arch, "machine": arch, "python_implementation": "CPython",
            "python_version": "3.11.7", "release": "6.5.0-1025-azure", "system": "Linux",
            "cpu": {"arch": "X86_64", "bits": 64, "count": count, "arch_string_raw": arch,
                    "vendor_id_raw": "AuthenticAMD", "brand_raw": brand, "hz_advertised_friendly": "2.4454 GHz"},
            **extra}


@pytest.mark.parametrize("other, matches", [
    (_machine(node="fv-az1234-567"), True),  # another runner of the same type
    (_machine(node="fv-az1234-567", release="6.8.0-1017-azure", python_version="3.11.9"), True),
    (_machine(brand="Intel(R) Xeon(R) Platinum 8370C CPU @ 2.80GHz"), False),
    (_machine(count=2), False),
    (_machine(arch="aarch64"), False),
    (_machine(gpu="NVIDIA H100 80GB HBM3"), False),  # a GPU benchmark, where a hook recorded the card
])
def test_pytest_benchmark_machines_match_by_hardware_not_hostname(tmp_path, capsys, other, matches):
    def bench(path, machine):
        path.write_text(json.dumps({"machine_info": machine, "benchmarks": [
            {"fullname": "tests/x.py::test_k", "stats": {"data": [1e-3, 1.01e-3, 0.99e-3] * 2}}]}))
        return path

    base, new = bench(tmp_path / "b.json", _machine()), bench(tmp_path / "n.json", other)
    assert cli.main(["compare", str(base), str(new)]) == (0 if matches else 2)
    out = capsys.readouterr().out
    assert ("1 matched" in out) == matches and ("unmatched" in out) != matches
    assert "runner-1" not in out and "AMD EPYC 7763 64-Core Processor x 4 cores (x86_64)" in out


def test_nothing_to_compare_fails(tmp_path, capsys):
    base = results_file(tmp_path / "base.json", {}, seed=0)
    empty = tmp_path / "empty.json"
    ResultsLog(empty, environment={}).flush()
    assert cli.main(["compare", str(base), str(empty)]) == 2  # was "no point matched", exit 0
    assert f"new {empty} has no timed points" in capsys.readouterr().err
    pb = tmp_path / "pb.json"
    pb.write_text(json.dumps({"machine_info": {"node": "n"}, "benchmarks": [
        {"fullname": "t::a", "stats": {"median": 1.0, "min": 0.9, "max": 1.1}}]}))
    pb_empty = tmp_path / "pb_empty.json"
    pb_empty.write_text(json.dumps({"benchmarks": []}))
    assert cli.main(["compare", str(pb), str(pb_empty)]) == 2
    assert "has no timed points" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, says", [
    ("--level", "1.5", "strictly between 0 and 1"), ("--level", "0", "strictly between 0 and 1"),
    ("--level", "nan", "strictly between 0 and 1"), ("--repeats", "0", "from 1 to 100000"),
    ("--repeats", "-5", "from 1 to 100000"),
    ("--repeats", "10000000000", "from 1 to 100000"),  # was a numpy MemoryError traceback and exit 1
    ("--repeats", "100", "pass --repeats 400 or more"),  # 2.5 resamples beyond each end: an interval of outliers
    ("--level", "0.99999", "pass a level of at most 0.9998"),  # needs 2 million resamples
])
def test_level_and_repeats_are_checked(tmp_path, capsys, flag, value, says):
    base = results_file(tmp_path / "base.json", {}, seed=0)
    assert cli.main(["compare", str(base), str(base), flag, value]) == 2  # were numpy tracebacks
    err = capsys.readouterr().err
    assert err.startswith(f"s2vbench compare: error: {flag} {value}") and says in err and "Traceback" not in err


def test_usage_errors_exit_2_as_argparse_does(tmp_path, capsys):
    # 2 is input the command cannot use, 1 a regression: CI must tell a broken job from a slower build
    base = results_file(tmp_path / "base.json", {}, seed=0)
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", str(base), str(base), "--repeats", "1e3"])
    assert info.value.code == 2 and "invalid int value" in capsys.readouterr().err
    # the defaults are within the bounds at the levels the README names
    assert cli.main(["compare", str(base), str(base), "--level", "0.99"]) == 0


def test_bootstrap_memory_stays_bounded_for_many_samples():
    # resampling all at once held repeats x samples values, several times over: 20 x 10^6 float64 is 160 MB each
    import tracemalloc

    x = np.random.default_rng(0).normal(1.0, 0.01, 1_000_000)
    tracemalloc.start()
    try:
        lo, hi = bootstrap_median_ci(x, repeats=20, new_size=len(x))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert lo <= np.median(x) <= hi and peak < 250e6  # 4 arrays of 4 rows at once: 128 MB


@pytest.mark.parametrize("doc, match", [
    ({"benchmarks": [{"name": "x"}]}, "needs a 'fullname' string and a 'stats' object"),
    ({"benchmarks": [{"fullname": "t::a", "stats": {"min": 1, "max": 2}}]}, "nor stats median, min and max"),
    ({"machine_info": "n", "benchmarks": []}, "machine_info must be an object"),
    ({"benchmarks": "abc"}, "'benchmarks' must be a list"),
    ({"benchmarks": [{"fullname": "t::a", "stats": {"data": [1.0, "x"]}}]}, "not a list of positive, finite times"),
    ({"benchmarks": [{"fullname": "t::a", "stats": {"median": 0.0, "min": 0.0, "max": 0.0}}]},
     "not a list of positive, finite times"),  # was a ZeroDivisionError printing the change
    ("{", "is not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "nests its JSON too deeply"),  # was a RecursionError traceback
    ([1, 2], "neither an s2vbench results file nor pytest-benchmark JSON"),
])
def test_malformed_inputs_name_the_file(tmp_path, doc, match):
    path = tmp_path / "in.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(ValueError, match=match) as info:
        load_series(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match="is a folder"):
        load_series(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_series(tmp_path / "nope.json")


def test_pytest_benchmark_json(tmp_path):
    def bench(path, data):
        doc = {"machine_info": {"node": "n", "cpu": {"brand_raw": "c"}},
               "benchmarks": [{"fullname": "tests/x.py::test_k", "stats": {"data": data, "median": float(np.median(data)),
                                                                          "min": min(data), "max": max(data)}}]}
        path.write_text(json.dumps(doc))
        return path

    rng = np.random.default_rng(0)
    data = 1e-3 * (1 + 0.01 * rng.standard_normal(40))
    base = bench(tmp_path / "b.json", data.tolist())
    same = bench(tmp_path / "s.json", rng.permutation(data).tolist())  # the same timings, in another order
    slow = bench(tmp_path / "f.json", (1.2 * data).tolist())
    assert cli.main(["compare", str(base), str(same)]) == 0
    assert cli.main(["compare", str(base), str(slow)]) == 1


def test_bootstrap_interval_covers_the_median_and_narrows_with_data():
    rng = np.random.default_rng(3)
    small = rng.normal(1.0, 0.05, 10).tolist()
    big = rng.normal(1.0, 0.05, 400).tolist()
    lo_s, hi_s = bootstrap_median_ci(small)
    lo_b, hi_b = bootstrap_median_ci(big)
    assert lo_s <= np.median(small) <= hi_s and lo_b <= np.median(big) <= hi_b
    assert hi_b - lo_b < hi_s - lo_s


def test_false_positive_rate_and_power():
    """Same-distribution pairs are rarely flagged and a 10% slowdown nearly always is. With 25 samples the
    percentile bootstrap of a median is somewhat narrow, so the 95% level flags ~8% of unchanged pairs (2.5%
    nominal); a higher --level trades power for fewer false alarms."""
    from s2vbench.bench.compare import Series, compare

    def rates(level):
        rng = np.random.default_rng(7)
        false_pos = detected = 0
        trials = 200
        for _ in range(trials):
            base = Series(("p", "h"), (1 + 0.02 * rng.standard_normal(25)).tolist())
            same = Series(("p", "h"), (1 + 0.02 * rng.standard_normal(25)).tolist())
            slow = Series(("p", "h"), (1.1 * (1 + 0.02 * rng.standard_normal(25))).tolist())
            false_pos += compare({base.key: base}, {same.key: same}, level, 500)[0][0].verdict == "regression"
            detected += compare({base.key: base}, {slow.key: slow}, level, 500)[0][0].verdict == "regression"
        return false_pos / trials, detected / trials

    fp95, power95 = rates(0.95)
    fp99, power99 = rates(0.99)
    assert fp95 <= 0.10 and power95 >= 0.99
    assert fp99 < fp95 and fp99 <= 0.04 and power99 >= 0.95


def _pb_file(path, stats):
    path.write_text(json.dumps({"machine_info": {"node": "n", "cpu": {"brand_raw": "c"}},
                                "benchmarks": [{"fullname": "tests/x.py::test_k", "stats": stats}]}))
    return path


def test_a_new_median_equal_to_the_interval_bound_is_unchanged(tmp_path, capsys):
    # equal baseline samples, enough to bootstrap: the interval is [t, t], so an identical new sample sits exactly
    # on its upper bound
    base = _pb_file(tmp_path / "b.json", {"data": [1e-3] * min_bootstrap_samples(0.95)})
    new = _pb_file(tmp_path / "n.json", {"data": [1e-3]})
    assert cli.main(["compare", str(base), str(new)]) == 0
    assert "0 regression(s) among 1 matched" in capsys.readouterr().out


def test_stats_only_pytest_benchmark_uses_min_to_max_as_the_interval(tmp_path, capsys):
    # without raw data the baseline's [min, max] is the interval: a median inside it, above the old one, is "same"
    base = _pb_file(tmp_path / "b.json", {"median": 1.0, "min": 0.9, "max": 1.1, "rounds": 10})
    new = _pb_file(tmp_path / "n.json", {"median": 1.05, "min": 1.0, "max": 1.2, "rounds": 10})
    assert cli.main(["compare", str(base), str(new)]) == 0
    out = capsys.readouterr().out
    assert "[0.9, 1.1]" in out and "min-max of 10" in out and "0 regression(s) among 1 matched" in out


def test_the_fewest_samples_to_bootstrap_is_where_their_range_reaches_the_level():
    # P(median within [min, max] of n samples) = 1 - 2^(1-n): 0.9375 at 5, 0.969 at 6; 0.984 at 7, 0.992 at 8
    assert [min_bootstrap_samples(level) for level in (0.5, 0.9, 0.95, 0.99)] == [2, 5, 6, 8]
    rng = np.random.default_rng(0)
    draws = rng.exponential(1.0, (20000, 6))  # skewed on purpose: the bound holds for any distribution
    inside = (draws.min(axis=1) <= np.log(2)) & (np.log(2) <= draws.max(axis=1))
    assert abs(inside.mean() - (1 - 0.5 ** 5)) < 0.005


CLIPS = [(1.346, 1.283, 1.409), (1.707, 1.702, 1.712), (3.686, 3.528, 3.843)]
"""(median, min, max) of longform's first clips, cpu-small-2026-11-24."""


def _longform_file(path, clips, n=2):
    """Records as longform writes them: the median of n steps, with min, max and n, but not the steps."""
    log = ResultsLog(path, environment={"device": "cpu", "cpu": "test-cpu", "cpu_count": 2})
    for i, (med, lo, hi) in enumerate(clips):
        log.append(Record("longform_step", f"framepack/clip{i:02d}", {}, [Metric(
            "step_time", med, "s", "median", stats={"median": med, "min": lo, "max": hi, "n": n})]))
    return path


def _scaled(clips, scale):
    return [tuple(scale * t for t in clip) for clip in clips]


def test_a_baseline_of_few_samples_is_not_judged_by_a_zero_width_interval(tmp_path, capsys):
    # was: a bootstrap of the one stored median, a zero-width interval, and every 0.1% slowdown a regression.
    # 2 samples against 2 cannot show a change at 95% by any rule: not judged, and nothing judged is exit 2
    base = _longform_file(tmp_path / "base.json", CLIPS)
    for scale in (1.001, 1.5):
        assert cli.main(["compare", str(base), str(_longform_file(tmp_path / "new.json", _scaled(CLIPS, scale)))]) == 2
        out, err = capsys.readouterr()
        assert "too few: 2 vs 2 samples" in out and "0 regression(s) among 3 matched point(s); 3 not judged" in out
        assert "could be judged" in err


def test_a_baseline_of_few_samples_is_judged_by_both_runs_ranges(tmp_path, capsys):
    # 2 baseline samples against 25 new: every new one slower than both baseline ones by chance is 1/C(27, 2)
    base = _longform_file(tmp_path / "base.json", CLIPS)
    shifted = [(med * 1.001, med * 0.98, med * 1.02) for med, _, _ in CLIPS]  # overlaps every baseline range
    assert cli.main(["compare", str(base), str(_longform_file(tmp_path / "same.json", shifted, n=25))]) == 0
    out = capsys.readouterr().out
    assert "ranges, 2 vs 25 samples" in out and "[1.283, 1.409]" in out and "0 regression(s) among 3 matched" in out
    # only clip01's baseline range lies below every new sample
    slower = [(med * 1.03, med * 1.005, med * 1.06) for med, _, _ in CLIPS]
    assert cli.main(["compare", str(base), str(_longform_file(tmp_path / "slow.json", slower, n=25))]) == 1
    out = capsys.readouterr().out
    assert "1 regression(s) among 3 matched" in out
    assert [line.split()[0] for line in out.splitlines() if line.endswith("regression")] == ["framepack/clip01"]
    # a few raw steps on each side: their own ranges
    few = results_file(tmp_path / "few.json", {}, n=3)
    assert cli.main(["compare", str(few), str(results_file(tmp_path / "few2.json", {"a": 1.5}, n=5))]) == 1
    out = capsys.readouterr().out
    assert "ranges, 3 vs 5 samples" in out and "1 regression(s) among 2 matched" in out
    # 3 against 3 parts by chance 1/20 of the time: judged at --level 0.9 (5% a side), not at 0.95
    assert cli.main(["compare", str(few), str(few), "--level", "0.9"]) == 0
    assert "ranges, 3 vs 3 samples" in capsys.readouterr().out


def test_a_baseline_of_one_sample_is_not_judged(tmp_path, capsys):
    # one sample and no range: reported as not judged, neither a regression nor silently passed
    doc = {"machine_info": {"node": "n", "cpu": {"brand_raw": "c"}}, "benchmarks": [
        {"fullname": "t::one", "stats": {"data": [1e-3]}},
        {"fullname": "t::many", "stats": {"data": [1e-3, 1.01e-3, 0.99e-3, 1.02e-3, 0.98e-3, 1e-3, 1.005e-3]}}]}
    base = tmp_path / "b.json"
    base.write_text(json.dumps(doc))
    doc["benchmarks"] = [{**b, "stats": {"data": [1.001 * t for t in b["stats"]["data"]]}} for b in doc["benchmarks"]]
    new = tmp_path / "n.json"
    new.write_text(json.dumps(doc))
    assert cli.main(["compare", str(base), str(new)]) == 0
    out = capsys.readouterr().out
    assert "too few: 1 vs 1 samples" in out and "too few samples" in out
    assert "0 regression(s) among 2 matched point(s); 1 not judged (too few samples" in out


def test_a_recorded_range_that_does_not_hold_its_median_is_refused(tmp_path):
    path = _pb_file(tmp_path / "b.json", {"median": 2.0, "min": 0.9, "max": 1.1})
    with pytest.raises(ValueError, match="median 2.0 outside its min 0.9 and max 1.1") as info:
        load_series(path)
    assert str(path) in str(info.value)


def _edit_step_times(src, dst, edit):
    """``src`` with ``edit(metric)`` applied to every step_time metric, written to ``dst``."""
    doc = json.loads(Path(src).read_text())
    for r in doc["records"]:
        for m in r["metrics"]:
            if m["name"] == "step_time":
                edit(m)
    Path(dst).write_text(json.dumps(doc))
    return dst


def _in(unit, factor):
    def edit(m):
        m["unit"], m["value"] = unit, m["value"] * factor
        m["stats"] = {k: v * factor if k.startswith("step") else v for k, v in m["stats"].items()}
    return edit


@pytest.mark.parametrize("unit, factor", [("ms", 1e3), ("us", 1e6), ("\u00b5s", 1e6), ("ns", 1e9)])
def test_step_times_in_other_units_of_time_are_read_as_seconds(tmp_path, capsys, unit, factor):
    # was: ms read as seconds, a +99900% "regression"
    base = results_file(tmp_path / "base.json", {}, seed=0)
    same = _edit_step_times(results_file(tmp_path / "s.json", {}, seed=1), tmp_path / "same.json", _in(unit, factor))
    assert cli.main(["compare", str(base), str(same)]) == 0
    assert "0 regression(s) among 2 matched" in capsys.readouterr().out
    slow = _edit_step_times(results_file(tmp_path / "f.json", {"a": 1.1}, seed=1), tmp_path / "slow.json",
                            _in(unit, factor))
    assert cli.main(["compare", str(base), str(slow)]) == 1
    out = capsys.readouterr().out
    assert "1 regression(s) among 2 matched" in out and "+10" in out and "99900" not in out


def test_step_times_in_units_not_of_time_are_refused(tmp_path, capsys):
    base = results_file(tmp_path / "base.json", {}, seed=0)
    new = _edit_step_times(base, tmp_path / "new.json", _in("tokens/s", 1.0))
    assert cli.main(["compare", str(base), str(new)]) == 2
    err = capsys.readouterr().err
    assert f"{new}: point 'a' records step_time in 'tokens/s', not a unit of time compare reads" in err


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_step_times_are_refused_naming_the_file_and_point(tmp_path, capsys, value):
    # was: a NaN step_time with valid per-step stats compared as if timed; s2vbench report refuses it
    base = results_file(tmp_path / "base.json", {}, seed=0)

    def spoil(m):
        m["value"] = str(value)  # as results.to_jsonable writes a non-finite float
    new = _edit_step_times(results_file(tmp_path / "n.json", {}, seed=1), tmp_path / "new.json", spoil)
    for args in ([base, new], [new, base]):
        assert cli.main(["compare", *map(str, args)]) == 2
        err = capsys.readouterr().err
        assert f"{new}: point 'a' has step_time {value!r} s, not a positive, finite time" in err


def test_our_benchmark_json_names_the_gpu_so_compare_keeps_cards_apart(tmp_path):
    # the conftest hook adds it (None without one); pytest-benchmark itself records only the host's CPU
    import subprocess
    import sys

    out = tmp_path / "bench.json"
    # outside this run's xdist worker: pytest-benchmark saves nothing where it sees xdist, inherited or not
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_XDIST", "PYTEST_CURRENT"))}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "tests/benchmarks", "-k", "test_attention_forward and sdpa", "--benchmark-json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1],
                          env=env)
    assert proc.returncode == 0, proc.stdout[-2000:]
    import torch

    assert json.loads(out.read_text())["machine_info"]["gpu"] == (
        torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
