"""``s2vbench compare BASELINE NEW``: regression checks for CI.

Points are matched by their name (which encodes the config) and their hardware (:func:`hardware`: never the
hostname). A change is flagged only when the new median lies outside a bootstrap confidence interval of the
baseline's median, taken for a median of as many samples as the new run has (the baseline is resampled, then a
new-sized sample drawn from the resample, so both runs' noise is in the interval); a slower median outside it is
a regression and makes the command exit non-zero. Reads our results files and pytest-benchmark JSON
(raw timings with ``--benchmark-save-data``; without them the baseline's [min, max] is the interval).

A point the baseline timed that the new run did not is never a pass: failed or out of memory there (a record
without a step time, as ``sweep.failure_record`` writes it) is a regression, and so is a point missing from the
new run or recorded there without a timing, unless ``allow_missing``. A point is missing only on hardware the new
run has points on: baseline points of other hardware are not the new run's to have.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .results import SCHEMA, is_int, is_number, read_results, step_times


@dataclass
class Series:
    """Timings of one matched point, in seconds."""

    key: tuple[str, str]
    """(point name, hardware)."""
    samples: list[float]
    """Per-step (or per-round) times."""
    low: float | None = None
    """Lower end of the interval when raw samples are missing."""
    high: float | None = None
    """Upper end of the interval when raw samples are missing."""
    status: str = "timed"
    """"timed", or why the point has no timings: "failed", "oom" (out of memory) or "not timed" (left untimed on
    purpose, e.g. oversubscribed or over a token cap)."""
    reason: str = ""
    """What the record says about why it has no timings."""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def hardware(cpu, cores, arch=None, accelerator=None) -> str:
    """The hardware a timing was taken on, as points are matched by it: the accelerator, if any, the CPU model,
    its core count and, where recorded, the architecture. Never the hostname: two CI runners of one machine type
    are the same hardware under different names, and runs on them must compare. Nor the Python or torch
    version: a slowdown that comes with an upgrade is one the check is there to flag."""
    cpu_part = f"{cpu or '?'} x {cores if cores is not None else '?'} cores" + (f" ({arch})" if arch else "")
    return f"{accelerator} | {cpu_part}" if accelerator else cpu_part


def _timings(path: Path, point: str, values) -> list[float]:
    """Positive, finite seconds, or an error naming the file and the point (instead of a numpy error later)."""
    if not isinstance(values, list) or not values or not all(
            is_number(v) and 0 < v < math.inf for v in values):
        raise ValueError(f"{path}: point {point!r} has timings {values!r:.120}, not a list of positive seconds; "
                         f"compare needs files as s2vbench or pytest-benchmark wrote them")
    return [float(v) for v in values]


def _untimed(key: tuple[str, str], record, metric) -> Series:
    """A point recorded without a step time, and why: ``sweep.failure_record`` and longform tag failures "failed"
    or "oom"; ``Metric.failed`` starts its text with "failed:"."""
    tags = set(record.tags)
    how = metric.how.strip().lower()
    status = ("oom" if "oom" in tags or how.startswith("oom") else
              "failed" if "failed" in tags or how.startswith("failed") else "not timed")
    return Series(key, [], status=status, reason=" ".join(metric.how.split())[:300])


def _pytest_benchmark(path: Path, doc: dict) -> dict[tuple[str, str], Series]:
    mi = doc.get("machine_info", {})
    cpu = mi.get("cpu", {}) if isinstance(mi, dict) else None
    if not isinstance(mi, dict) or not isinstance(cpu, dict):
        raise ValueError(f"{path}: pytest-benchmark machine_info must be an object (with cpu an object), got "
                         f"{mi!r:.80}; pass the JSON that pytest --benchmark-json wrote")
    # pytest-benchmark's machine_info names no GPU; a "gpu" entry, where a pytest_benchmark_update_machine_info
    # hook adds one, keeps GPU benchmarks on different cards apart when their hosts' CPUs are alike
    hw = hardware(cpu.get("brand_raw") or mi.get("processor"), cpu.get("count"),
                  cpu.get("arch_string_raw") or mi.get("machine"), mi.get("gpu"))
    if not isinstance(doc["benchmarks"], list):
        raise ValueError(f"{path}: pytest-benchmark 'benchmarks' must be a list, got {doc['benchmarks']!r:.80}")
    out: dict[tuple[str, str], Series] = {}
    for i, b in enumerate(doc["benchmarks"]):
        name = b.get("fullname") if isinstance(b, dict) else None
        st = b.get("stats") if isinstance(b, dict) else None
        if not isinstance(name, str) or not isinstance(st, dict):
            raise ValueError(f"{path}: benchmark {i} needs a 'fullname' string and a 'stats' object, got "
                             f"{b!r:.120}; pass the JSON that pytest --benchmark-json wrote")
        if st.get("data"):
            out[(name, hw)] = Series((name, hw), _timings(path, name, st["data"]))
        elif not {"median", "min", "max"} <= set(st):
            raise ValueError(f"{path}: benchmark {name!r} has neither raw timings (stats.data, saved with "
                             f"--benchmark-save-data) nor stats median, min and max")
        else:
            med, lo, hi = _timings(path, name, [st["median"], st["min"], st["max"]])
            out[(name, hw)] = Series((name, hw), [med], lo, hi)
    return out


def load_series(path: Path) -> dict[tuple[str, str], Series]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist; pass a results.json or pytest-benchmark JSON") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder; pass the results.json inside it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}); was it cut short? Re-run the benchmark that wrote "
                         f"it") from None
    out: dict[tuple[str, str], Series] = {}
    if isinstance(doc, dict) and doc.get("schema") == SCHEMA:
        for r in read_results(path):
            try:
                m = r.metric("step_time")
            except KeyError:  # a record of a kind that times no steps (a summary, a kernel check)
                continue
            env = r.environment
            device = env.get("device")
            hw = hardware(env.get("cpu"), env.get("cpu_count"), accelerator=device if device != "cpu" else None)
            key = (r.name, hw)
            # kept, not skipped: a point that failed in the new run must fail the check, not vanish from it
            out[key] = _untimed(key, r, m) if m.value is None else Series(key, _timings(path, r.name, step_times(r)))
        return out
    if isinstance(doc, dict) and "benchmarks" in doc:  # pytest-benchmark
        return _pytest_benchmark(path, doc)
    raise ValueError(f"{path} is neither an s2vbench results file nor pytest-benchmark JSON; pass a results.json "
                     f"that s2vbench wrote or the file of pytest --benchmark-json")


def bootstrap_median_ci(samples: list[float], level: float = 0.95, repeats: int = 2000, seed: int = 0,
                        new_size: int | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of the baseline median; with ``new_size``, of the median of a new sample of
    that size drawn from a resample of the baseline (both runs' sampling noise)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not is_int(repeats) or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    x = np.asarray(samples, dtype=np.float64)
    if len(x) == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    resamples = rng.choice(x, size=(repeats, len(x)), replace=True)
    if new_size is not None:
        pick = rng.integers(0, len(x), size=(repeats, new_size))
        resamples = np.take_along_axis(resamples, pick, axis=1)
    meds = np.median(resamples, axis=1)
    a = (1 - level) / 2
    return float(np.quantile(meds, a)), float(np.quantile(meds, 1 - a))


@dataclass
class Verdict:
    key: tuple[str, str]
    baseline: float | None
    new: float | None
    low: float | None
    high: float | None
    verdict: str
    """Both timed: "regression", "improvement" or "same". Otherwise (see :data:`LOST`): "failed" or "oom" in the
    new run, "not timed" there, "missing" from it; or, not judged, "untimed in both" and "no baseline timing"."""
    reason: str = ""
    """Why a point has no timing in the new run (or in either)."""


FAILED = ("failed", "oom")
"""Verdicts of points the new run failed at: always regressions."""
LOST = ("missing", "not timed")
"""Verdicts of points the baseline timed and the new run did not (nor failed at): regressions unless allowed."""


def compare(baseline: dict, new: dict, level: float = 0.95, repeats: int = 2000
            ) -> tuple[list[Verdict], list[tuple[str, str]]]:
    """Verdicts for points present in both, and for baseline points missing from the new run on hardware it has
    points on; and the keys present in only one that were not judged."""
    verdicts = []
    new_hardware = {hw for _, hw in new}
    for key in sorted(set(baseline) | set(new)):
        b, n = baseline.get(key), new.get(key)
        if b is None:
            continue
        if n is None:
            if b.status == "timed" and key[1] in new_hardware:
                verdicts.append(Verdict(key, b.median, None, None, None, "missing", "no record in the new run"))
            continue
        if b.status != "timed" or n.status != "timed":
            if b.status == "timed":
                verdicts.append(Verdict(key, b.median, None, None, None, n.status, n.reason))
            elif n.status in FAILED and b.status not in FAILED:  # ran in the baseline, if untimed; fails now
                verdicts.append(Verdict(key, None, None, None, None, n.status, n.reason))
            elif n.status == "timed":
                verdicts.append(Verdict(key, None, n.median, None, None, "no baseline timing", b.reason))
            else:
                verdicts.append(Verdict(key, None, None, None, None, "untimed in both", b.reason if
                                        b.reason == n.reason else f"baseline: {b.reason}; new: {n.reason}"))
            continue
        if b.low is not None:
            lo, hi = b.low, b.high
        else:
            lo, hi = bootstrap_median_ci(b.samples, level, repeats, new_size=len(n.samples))
        med = n.median
        verdict = "regression" if med > hi else "improvement" if med < lo else "same"
        verdicts.append(Verdict(key, b.median, med, lo, hi, verdict))
    judged = {v.key for v in verdicts}
    unmatched = sorted(k for k in set(baseline) ^ set(new) if k not in judged)
    return verdicts, unmatched


def _explain(v: Verdict, allow_missing: bool) -> str:
    """One line on a point that has no timing in the new run, or in the baseline."""
    what = {"failed": "FAILED in the new run", "oom": "OUT OF MEMORY in the new run",
            "not timed": "NOT TIMED in the new run", "missing": "MISSING from the new run",
            "untimed in both": "untimed in both runs", "no baseline timing": "timed now, untimed in the baseline"}
    if v.verdict in FAILED:
        counted = " (a regression)"
    elif v.verdict in LOST:
        counted = " (allowed by --allow-missing)" if allow_missing else " (a regression; --allow-missing permits it)"
    else:
        counted = " (not judged)"
    return f"{what[v.verdict]}{counted}: {v.key[0]} on {v.key[1]}" + (f": {v.reason}" if v.reason else "")


def run_compare(baseline: Path, new: Path, level: float = 0.95, repeats: int = 2000,
                allow_missing: bool = False) -> int:
    from tabulate import tabulate

    # checked before reading anything: cli passes --level and --repeats through unchecked
    if not 0 < level < 1:
        raise ValueError(f"--level {level}: a confidence level lies strictly between 0 and 1, e.g. 0.95 or 0.99")
    if not is_int(repeats) or repeats < 1:
        raise ValueError(f"--repeats {repeats}: the number of bootstrap resamples must be a positive integer, "
                         f"e.g. 2000")
    series = {}
    for which, path in (("baseline", baseline), ("new", new)):
        series[which] = load_series(path)
        # the baseline needs timings to judge by; the new run may have failed at every point it recorded
        if not any(s.status == "timed" for s in series[which].values()) and (which == "baseline"
                                                                             or not series[which]):
            raise ValueError(f"{which} {path} has no timed points (no records with step times, or no benchmarks); "
                             f"nothing to compare: pass a results file of a run that timed its points")
    if not set(series["baseline"]) & set(series["new"]):
        for key in sorted(set(series["baseline"]) | set(series["new"])):
            print(f"unmatched (config or hardware differs): {key[0]} on {key[1]}")
        raise ValueError(f"no point of {new} matched one of {baseline} by config and hardware (listed above), so "
                         f"nothing was compared; compare runs of the same points on the same hardware")
    verdicts, unmatched = compare(series["baseline"], series["new"], level, repeats)
    timed = [v for v in verdicts if v.low is not None]
    rows = [(v.key[0], v.key[1], f"{v.baseline:.4g}", f"{v.new:.4g}", f"[{v.low:.4g}, {v.high:.4g}]",
             f"{v.new / v.baseline - 1:+.1%}", v.verdict) for v in timed]
    if rows:
        print(tabulate(rows, headers=["point", "hardware", "baseline s", "new s",
                                      f"{level:.0%} CI of baseline median", "change", "verdict"]))
    for v in verdicts:
        if v.low is None:
            print(_explain(v, allow_missing))
    for key in unmatched:
        side = "baseline" if key in series["baseline"] else "new run"
        print(f"unmatched (config or hardware differs; only in the {side}): {key[0]} on {key[1]}")
    slower = sum(v.verdict == "regression" for v in timed)
    failed = sum(v.verdict in FAILED for v in verdicts)
    lost = sum(v.verdict in LOST for v in verdicts)
    missing = sum(v.verdict == "missing" for v in verdicts)
    regressions = slower + failed + (0 if allow_missing else lost)
    line = f"{regressions} regression(s) among {len(verdicts) - missing} matched point(s)"
    if missing:
        line += f" and {missing} missing"
    if failed or lost:
        line += (f": {slower} slower, {failed} failed or out of memory in the new run, {lost} missing from it or "
                 f"untimed there" + (" (allowed by --allow-missing)" if allow_missing and lost else ""))
    print(line)
    return 1 if regressions else 0


__all__ = ["FAILED", "LOST", "Series", "Verdict", "bootstrap_median_ci", "compare", "hardware", "load_series", "run_compare"]
