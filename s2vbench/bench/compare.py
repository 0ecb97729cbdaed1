"""``s2vbench compare BASELINE NEW``: regression checks for CI.

Points are matched by their name (which encodes the config) and their hardware. A change is flagged only when
the new median lies outside a bootstrap confidence interval of the baseline's median, taken for a median of as
many samples as the new run has (the baseline is resampled, then a new-sized sample drawn from the resample,
so both runs' noise is in the interval); a slower median outside it is a regression and makes the command
exit non-zero. Reads our results files and pytest-benchmark JSON
(raw timings with ``--benchmark-save-data``; without them the baseline's [min, max] is the interval).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .results import SCHEMA, read_results, step_times


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

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def load_series(path: Path) -> dict[tuple[str, str], Series]:
    doc = json.loads(Path(path).read_text())
    out: dict[tuple[str, str], Series] = {}
    if isinstance(doc, dict) and doc.get("schema") == SCHEMA:
        for r in read_results(path):
            steps = step_times(r)
            if not steps:
                continue
            hw = f"{r.environment.get('device')}|{r.environment.get('cpu')}"
            out[(r.name, hw)] = Series((r.name, hw), steps)
        return out
    if isinstance(doc, dict) and "benchmarks" in doc:  # pytest-benchmark
        mi = doc.get("machine_info", {})
        hw = f"{mi.get('cpu', {}).get('brand_raw', mi.get('processor'))}|{mi.get('node')}"
        for b in doc["benchmarks"]:
            st = b["stats"]
            if st.get("data"):
                out[(b["fullname"], hw)] = Series((b["fullname"], hw), list(st["data"]))
            else:
                out[(b["fullname"], hw)] = Series((b["fullname"], hw), [st["median"]], st["min"], st["max"])
        return out
    raise ValueError(f"{path} is neither an s2vbench results file nor pytest-benchmark JSON")


def bootstrap_median_ci(samples: list[float], level: float = 0.95, repeats: int = 2000, seed: int = 0,
                        new_size: int | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval of the baseline median; with ``new_size``, of the median of a new sample of
    that size drawn from a resample of the baseline (both runs' sampling noise)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
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
    baseline: float
    new: float
    low: float
    high: float
    verdict: str
    """"regression", "improvement" or "same"."""


def compare(baseline: dict, new: dict, level: float = 0.95, repeats: int = 2000
            ) -> tuple[list[Verdict], list[tuple[str, str]]]:
    """Verdicts for points present in both; and the keys present in only one."""
    verdicts = []
    for key in sorted(set(baseline) & set(new)):
        b, n = baseline[key], new[key]
        if b.low is not None:
            lo, hi = b.low, b.high
        else:
            lo, hi = bootstrap_median_ci(b.samples, level, repeats, new_size=len(n.samples))
        med = n.median
        verdict = "regression" if med > hi else "improvement" if med < lo else "same"
        verdicts.append(Verdict(key, b.median, med, lo, hi, verdict))
    unmatched = sorted(set(baseline) ^ set(new))
    return verdicts, unmatched


def run_compare(baseline: Path, new: Path, level: float = 0.95, repeats: int = 2000) -> int:
    from tabulate import tabulate

    verdicts, unmatched = compare(load_series(baseline), load_series(new), level, repeats)
    rows = [(v.key[0], v.key[1], f"{v.baseline:.4g}", f"{v.new:.4g}", f"[{v.low:.4g}, {v.high:.4g}]",
             f"{v.new / v.baseline - 1:+.1%}", v.verdict) for v in verdicts]
    print(tabulate(rows, headers=["point", "hardware", "baseline s", "new s", f"{level:.0%} CI of baseline median",
                                  "change", "verdict"]))
    for key in unmatched:
        print(f"unmatched (config or hardware differs): {key[0]} on {key[1]}")
    regressions = [v for v in verdicts if v.verdict == "regression"]
    if not verdicts:
        print("no point matched by config and hardware")
    print(f"{len(regressions)} regression(s) among {len(verdicts)} matched point(s)")
    return 1 if regressions else 0


__all__ = ["Series", "Verdict", "bootstrap_median_ci", "compare", "load_series", "run_compare"]
