"""``s2vbench compare BASELINE NEW``: regression checks for CI.

Points are matched by their name (which encodes the config) and their hardware (:func:`hardware`: never the
hostname). A change is flagged only when the new median lies outside a bootstrap confidence interval of the
baseline's median, taken for a median of as many samples as the new run has (the baseline is resampled, then a
new-sized sample drawn from the resample, so both runs' noise is in the interval); a slower median outside it is
a regression and makes the command exit non-zero. Reads our results files and pytest-benchmark JSON
(raw timings with ``--benchmark-save-data``; without them the baseline's [min, max] is the interval, where its
rounds are enough for one, below).

A point the baseline timed that the new run did not is never a pass: failed or out of memory there (a record
without a step time, as ``sweep.failure_record`` writes it) is a regression, and so is a point missing from the
new run or recorded there without a timing, unless ``allow_missing``. A point is missing only on hardware the new
run has points on: baseline points of other hardware are not the new run's to have.

Too few baseline samples for a bootstrap: every median the bootstrap draws lies within the baseline's own
[min, max], and that range covers the median of the distribution the samples came from with probability
1 - 2^(1-n) for n samples, whatever the distribution. Below :func:`min_bootstrap_samples` (6 at 0.95, 8 at 0.99)
even the full range falls short of the level; with one sample the bootstrap interval has no width at all, and any
slowdown would be flagged. Nor is the new median against the few samples' [min, max] a fair test: from one
distribution, the median of 2 new samples lies above the max of 2 baseline ones about 30% of the time. Such a
point is judged by the two runs' ranges (samples, or the min, max and count recorded): slower when every new
sample is slower than every baseline one (the new min above the baseline max), faster the other way round. With
no change that happens by chance with probability 1 / C(n_b + n_new, n_b), whatever the distribution; it is used
only where that is at most (1 - level) / 2, the bootstrap interval's own rate on each side (at 0.95: 2 baseline
samples against 8 new, 3 against 5; not 2 against 2, nor 3 against 3, which 0.9 allows). Otherwise the point is
reported as "too few samples" and counted as not judged in the summary: neither a regression nor a pass. A run in
which no point could be judged is an error (exit 2), as one in which no point matched.
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
    """The recorded minimum of the samples behind the median, where the file has one."""
    high: float | None = None
    """The recorded maximum."""
    n: int | None = None
    """How many samples the recorded median, minimum and maximum are of, where the file says."""
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
        raise ValueError(f"{path}: point {point!r} has timings {values!r:.120}, not a list of positive, finite "
                         f"times; compare needs files as s2vbench or pytest-benchmark wrote them")
    return [float(v) for v in values]


def _spread(path: Path, point: str, median: float, stats: dict, n_key: str) -> dict:
    """The recorded min, max and sample count of a point, as Series fields; {} where the file has none."""
    if "min" not in stats or "max" not in stats:
        return {}
    lo, hi = _timings(path, point, [stats["min"], stats["max"]])
    if not lo <= median <= hi:
        raise ValueError(f"{path}: point {point!r} has median {median!r} outside its min {lo!r} and max {hi!r}; "
                         f"compare needs files as s2vbench or pytest-benchmark wrote them")
    n = stats.get(n_key)
    return {"low": lo, "high": hi, "n": n if is_int(n) and n > 0 else None}


_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ns": 1e-9}
"""Units a step time may be recorded in (micro as u, the micro sign or mu), in seconds."""


def _timed(path: Path, key: tuple[str, str], record, metric) -> Series:
    """A timed point in seconds, whatever unit of time it was recorded in."""
    name, unit = record.name, metric.unit
    if unit not in _SECONDS:  # a figure of another unit read as seconds would be a false change of 1000x or more
        raise ValueError(f"{path}: point {name!r} records step_time in {unit!r}, not a unit of time compare reads "
                         f"({', '.join(_SECONDS)}); compare needs files as s2vbench wrote them")
    if not 0 < metric.value < math.inf:  # NaN too; s2vbench report refuses these records as well
        raise ValueError(f"{path}: point {name!r} has step_time {metric.value!r} {unit}, not a positive, finite "
                         f"time, so it has no timing to compare; re-run that point, or remove its record")
    factor = _SECONDS[unit]
    steps = [t * factor for t in _timings(path, name, step_times(record))]
    stats = {k: v * factor if k in ("min", "max") and is_number(v) else v for k, v in metric.stats.items()}
    return Series(key, steps, **_spread(path, name, metric.value * factor, stats, "n"))


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
            med = _timings(path, name, [st["median"]])[0]
            out[(name, hw)] = Series((name, hw), [med], **_spread(path, name, med, st, "rounds"))
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
    except RecursionError:  # json's parser recurses per nesting level; neither format nests more than a few
        raise ValueError(f"{path} nests its JSON too deeply to read; pass a results.json or pytest-benchmark JSON "
                         f"as written") from None
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
            out[key] = _untimed(key, r, m) if m.value is None else _timed(path, key, r, m)
        return out
    if isinstance(doc, dict) and "benchmarks" in doc:  # pytest-benchmark
        return _pytest_benchmark(path, doc)
    raise ValueError(f"{path} is neither an s2vbench results file nor pytest-benchmark JSON; pass a results.json "
                     f"that s2vbench wrote or the file of pytest --benchmark-json")


def min_bootstrap_samples(level: float) -> int:
    """The fewest samples whose [min, max] covers the population median with probability ``level`` at least
    (1 - 2^(1-n) >= level): with fewer, no interval drawn from the samples, the bootstrap's included, can."""
    n = 1
    while 1 - 0.5 ** (n - 1) < level:
        n += 1
    return n


def _range(s: Series) -> tuple[float, float, int | None]:
    """A series' [min, max], and how many samples it spans (None where the file does not say)."""
    if len(s.samples) > 1:
        return min(s.samples), max(s.samples), len(s.samples)
    if s.low is not None:
        return s.low, s.high, s.n
    return s.samples[0], s.samples[0], 1


def judge(b: Series, n: Series, level: float = 0.95, repeats: int = 2000
          ) -> tuple[str, float | None, float | None, str]:
    """(verdict, low, high, where the interval comes from) for a point timed in both runs; ("too few samples",
    None, None, why) where the samples cannot support the level (see the module's docstring)."""
    need = min_bootstrap_samples(level)
    if len(b.samples) >= need:
        lo, hi = bootstrap_median_ci(b.samples, level, repeats, new_size=len(n.samples))
        source = f"{level:.0%} bootstrap"
    else:
        lo, hi, nb = _range(b)
        if nb is None or nb < need:
            new_lo, new_hi, nn = _range(n)
            chance = 1 / math.comb(nb + nn, nb) if nb and nn else 1.0
            if chance > (1 - level) / 2 * (1 + 1e-9):  # 1/20 at --level 0.9 is 0.05, not above 0.04999...
                return "too few samples", None, None, f"too few: {nb or '?'} vs {nn or '?'} samples"
            verdict = "regression" if new_lo > hi else "improvement" if new_hi < lo else "same"
            return verdict, lo, hi, f"ranges, {nb} vs {nn} samples"
        source = f"min-max of {nb}"  # a recorded range over enough samples: it covers the median at the level
    med = n.median
    return ("regression" if med > hi else "improvement" if med < lo else "same"), lo, hi, source


MAX_REPEATS = 100_000
"""The most bootstrap resamples: the interval's ends move far less than timing noise well before this, and time
grows with it."""
MIN_TAIL = 10
"""The fewest resamples beyond each end of the interval: with fewer, an end is one of a few extreme draws."""
_CHUNK = 1 << 22
"""Resampled values held at once (32 MiB of float64), so that memory stays bounded for any sample count."""


def check_settings(level, repeats) -> None:
    """--level and --repeats as the check can use them, or a ValueError naming the flag and a value that works."""
    if not is_number(level) or not 0 < level < 1:
        raise ValueError(f"--level {level}: a confidence level lies strictly between 0 and 1, e.g. 0.95 or 0.99")
    if not is_int(repeats) or not 1 <= repeats <= MAX_REPEATS:
        raise ValueError(f"--repeats {repeats}: the number of bootstrap resamples must be an integer from 1 to "
                         f"{MAX_REPEATS}, e.g. 2000")
    # the tolerance keeps float error in 1 - level from asking for one resample more (2000 at 0.99, not 2001)
    least = math.ceil(2 * MIN_TAIL / (1 - level) * (1 - 1e-9))
    if least > MAX_REPEATS:
        raise ValueError(f"--level {level} needs {least} bootstrap resamples for {MIN_TAIL} beyond each end of the "
                         f"interval, over the most (--repeats {MAX_REPEATS}); pass a level of at most "
                         f"{1 - 2 * MIN_TAIL / MAX_REPEATS:g}")
    if repeats < least:
        raise ValueError(f"--repeats {repeats} at --level {level} leaves {repeats * (1 - level) / 2:g} resample(s) "
                         f"beyond each end of the interval, so its ends rest on a few extreme draws; pass --repeats "
                         f"{least} or more")


def bootstrap_median_ci(samples: list[float], level: float = 0.95, repeats: int = 2000, seed: int = 0,
                        new_size: int | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of the baseline median; with ``new_size``, of the median of a new sample of
    that size drawn from a resample of the baseline (both runs' sampling noise)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if not is_int(repeats) or not 1 <= repeats <= MAX_REPEATS:
        raise ValueError(f"repeats must be an integer from 1 to {MAX_REPEATS}, got {repeats!r}")
    x = np.asarray(samples, dtype=np.float64)
    if len(x) == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    meds = np.empty(repeats)
    rows = max(1, _CHUNK // max(len(x), new_size or 0))
    for start in range(0, repeats, rows):
        r = min(rows, repeats - start)
        resamples = rng.choice(x, size=(r, len(x)), replace=True)
        if new_size is not None:
            pick = rng.integers(0, len(x), size=(r, new_size))
            resamples = np.take_along_axis(resamples, pick, axis=1)
        meds[start:start + r] = np.median(resamples, axis=1)
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
    """Both timed: "regression", "improvement", "same", or "too few samples" to judge by (not judged;
    :func:`judge`). Otherwise (see :data:`LOST`): "failed" or "oom" in the
    new run, "not timed" there, "missing" from it; or, not judged, "untimed in both" and "no baseline timing"."""
    reason: str = ""
    """Why a point has no timing in the new run (or in either), or too few samples."""
    source: str = ""
    """Where the interval comes from: a bootstrap, the baseline's recorded min-max, or both runs' ranges."""


JUDGED = ("regression", "improvement", "same")
"""Verdicts of points timed in both runs and judged."""
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
        verdict, lo, hi, source = judge(b, n, level, repeats)
        verdicts.append(Verdict(key, b.median, n.median, lo, hi, verdict, source=source))
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

    check_settings(level, repeats)  # before reading anything: cli passes --level and --repeats through unchecked
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
    timed = [v for v in verdicts if v.verdict in (*JUDGED, "too few samples")]
    rows = [(v.key[0], v.key[1], f"{v.baseline:.4g}", f"{v.new:.4g}",
             f"[{v.low:.4g}, {v.high:.4g}]" if v.low is not None else "-", v.source or v.reason,
             f"{v.new / v.baseline - 1:+.1%}", v.verdict) for v in timed]
    if rows:
        print(tabulate(rows, headers=["point", "hardware", "baseline s", "new s", "baseline interval",
                                      "from", "change", "verdict"]))
    for v in verdicts:
        if v.verdict not in (*JUDGED, "too few samples"):
            print(_explain(v, allow_missing))
    for key in unmatched:
        side = "baseline" if key in series["baseline"] else "new run"
        print(f"unmatched (config or hardware differs; only in the {side}): {key[0]} on {key[1]}")
    slower = sum(v.verdict == "regression" for v in timed)
    unjudged = sum(v.verdict == "too few samples" for v in timed)
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
    if unjudged:
        line += (f"; {unjudged} not judged (too few samples: under {min_bootstrap_samples(level)} in the baseline, "
                 f"and too few in both runs for their ranges to part by chance under {(1 - level) / 2:.1%})")
    print(line)
    if not regressions and not any(v.verdict in JUDGED for v in verdicts):
        raise ValueError(f"no point of {baseline} could be judged (listed above), so nothing was checked; time "
                         f"the baseline with at least {min_bootstrap_samples(level)} steps or rounds per point, or "
                         f"both runs with more, or pass a lower --level")
    return 1 if regressions else 0


__all__ = ["FAILED", "JUDGED", "LOST", "Series", "Verdict", "bootstrap_median_ci", "compare", "check_settings",
           "hardware", "judge", "load_series", "min_bootstrap_samples", "run_compare"]
