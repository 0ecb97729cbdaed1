"""Video-dataset manifests: JSON Lines or Parquet rows of (path, width, height, frames, fps, audio_seconds).

Rows are validated one by one. A bad row (zero or negative size, non-positive frames or fps, a clip the model
cannot use) either raises :class:`ManifestError` naming the file, the line and the clip path, or is skipped
and counted, as the caller chooses with ``on_error``. Parquet goes through pyarrow, imported only when a
Parquet file is read or written, so JSON Lines needs nothing beyond the standard library.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FIELDS = ("path", "width", "height", "frames", "fps", "audio_seconds")
REQUIRED = FIELDS[:5]


class ManifestError(ValueError):
    """A manifest (or one of its rows) that cannot be used, naming where and what would fix it."""


class RowProblem(ValueError):
    """What is wrong with one row, as "<kind>: <detail>" (the reader adds where)."""


@dataclass(frozen=True)
class ManifestRow:
    """One source video of a dataset."""

    path: str
    """Where the video lives (opaque to the bucketer)."""
    width: int
    """Source width in pixels."""
    height: int
    """Source height in pixels."""
    frames: int
    """Source frame count."""
    fps: float
    """Source frame rate in frames per second."""
    audio_seconds: float | None = None
    """Length of the audio track in seconds, if known."""

    @property
    def seconds(self) -> float:
        """Duration of the video stream in seconds."""
        return self.frames / self.fps

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["audio_seconds"] is None:
            del d["audio_seconds"]
        return d


@dataclass(frozen=True)
class SkippedRow:
    """A row left out under ``on_error="skip"``."""

    line: int
    """1-based line number (JSON Lines) or row number (Parquet) in the source file."""
    path: str
    """The row's clip path, or "?" when the row has none."""
    reason: str
    """What is wrong with it."""


@dataclass
class ReadResult:
    """The usable rows of a manifest and the rows that were skipped."""

    rows: list[ManifestRow]
    """Valid rows, in file order."""
    skipped: list[SkippedRow] = field(default_factory=list)
    """Rows left out, with why (always empty under on_error="raise")."""
    source: str = ""
    """The file it came from."""

    def skipped_by_reason(self) -> dict[str, int]:
        """Counts of skipped rows per reason kind (the text before the first colon)."""
        out: dict[str, int] = {}
        for s in self.skipped:
            kind = s.reason.split(":", 1)[0]
            out[kind] = out.get(kind, 0) + 1
        return out


RowCheck = Callable[[ManifestRow], "str | None"]
"""A model-side check of a parsed row: None if usable, else why not (e.g. "too short: ...")."""


def _number(d: dict, key: str, kind: type) -> Any:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RowProblem(f"bad type: {key}={v!r} is not a number")
    if kind is int:
        if not float(v).is_integer():
            raise RowProblem(f"bad type: {key}={v!r} is not a whole number")
        return int(v)
    if not math.isfinite(float(v)):
        raise RowProblem(f"bad value: {key}={v!r} is not finite")
    return float(v)


def parse_row(d: Any) -> ManifestRow:
    """A validated row from a mapping; raises RowProblem with "<kind>: <detail>" (kind: missing field, bad type,
    zero size, bad frames, bad fps, bad audio)."""
    if not isinstance(d, dict):
        raise RowProblem(f"bad type: a row must be a JSON object, got {type(d).__name__}")
    missing = [k for k in REQUIRED if d.get(k) is None]
    if missing:
        raise RowProblem(f"missing field: {', '.join(missing)} (every row needs {', '.join(REQUIRED)})")
    if not isinstance(d["path"], str) or not d["path"]:
        raise RowProblem(f"bad type: path={d['path']!r} must be a non-empty string")
    width, height = _number(d, "width", int), _number(d, "height", int)
    frames, fps = _number(d, "frames", int), _number(d, "fps", float)
    if width <= 0 or height <= 0:
        raise RowProblem(f"zero size: width x height = {width} x {height}; both must be positive pixel counts")
    if frames <= 0:
        raise RowProblem(f"bad frames: frames={frames}; must be a positive frame count")
    if fps <= 0:
        raise RowProblem(f"bad fps: fps={fps}; must be a positive frame rate")
    audio = d.get("audio_seconds")
    if audio is not None:
        audio = _number(d, "audio_seconds", float)
        if audio < 0:
            raise RowProblem(f"bad audio: audio_seconds={audio}; must be non-negative (or left out)")
    return ManifestRow(d["path"], width, height, frames, fps, audio)


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ManifestError("Parquet manifests need pyarrow, which is not installed: `pip install pyarrow`, or "
                            "use a JSON Lines manifest (.jsonl)") from None
    return pyarrow


def _raw_rows(path: Path) -> Iterator[tuple[int, Any, str | None]]:
    """(line or row number, parsed object or None, parse error or None) for each record of the file."""
    if path.suffix == ".parquet":
        pa = _pyarrow()
        try:
            table = pa.parquet.read_table(path)
        except (pa.ArrowException, OSError) as e:  # truncated, not Parquet at all, unreadable
            raise ManifestError(f"manifest {path} cannot be read as Parquet ({e}); write it again (e.g. with "
                                f"write_manifest) or use a JSON Lines manifest (.jsonl)") from None
        for i, d in enumerate(table.to_pylist(), start=1):
            yield i, d, None
        return
    with path.open("rb") as f:
        for i, raw in enumerate(f, start=1):
            # Decoded line by line, so that a stray byte is one bad row (skipped or named) and not a crash.
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield i, None, f"bad json: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})"
                continue
            if not line.strip():
                continue
            try:
                yield i, json.loads(line), None
            except json.JSONDecodeError as e:
                yield i, None, f"bad json: {e.msg} at column {e.colno}"


def read_manifest(path: str | Path, on_error: str = "raise", check: RowCheck | None = None) -> ReadResult:
    """Read a ``.jsonl`` or ``.parquet`` manifest.

    ``on_error="raise"`` stops at the first bad row with a :class:`ManifestError` naming file, line and clip
    path; ``"skip"`` leaves bad rows out and lists them in ``ReadResult.skipped``. ``check`` adds model-side
    validation (``BucketGeometry.row_problem``: too short or too small for the model)."""
    if on_error not in ("raise", "skip"):
        raise ManifestError(f"on_error={on_error!r}: choose 'raise' (stop at the first bad row) or 'skip' "
                            f"(leave bad rows out and count them)")
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"manifest {path} does not exist")
    if path.is_dir():
        raise ManifestError(f"manifest {path} is a folder; pass the .jsonl or .parquet file in it")
    if path.suffix not in (".jsonl", ".parquet"):
        raise ManifestError(f"manifest {path}: unknown format {path.suffix!r}; use .jsonl (JSON Lines) or .parquet")
    result = ReadResult([], [], str(path))
    for line, obj, parse_error in _raw_rows(path):
        clip = obj.get("path", "?") if isinstance(obj, dict) else "?"
        reason = parse_error
        row = None
        if reason is None:
            try:
                row = parse_row(obj)
            except RowProblem as e:
                reason = str(e)
        if reason is None and check is not None:
            reason = check(row)
        if reason is None:
            result.rows.append(row)
            continue
        if on_error == "raise":
            raise ManifestError(f"{path}:{line}: row {clip!r}: {reason}. Fix or remove the row, or read with "
                                f"on_error='skip' (--on-error skip) to leave such rows out and count them")
        result.skipped.append(SkippedRow(line, str(clip), reason))
    return result


def write_manifest(rows: Iterable[ManifestRow], path: str | Path) -> Path:
    """Write rows as JSON Lines (``.jsonl``) or Parquet (``.parquet``, needs pyarrow)."""
    path = Path(path)
    rows = list(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pa = _pyarrow()
        cols = {k: [getattr(r, k) for r in rows] for k in FIELDS}
        pa.parquet.write_table(pa.table(cols), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in rows))
    else:
        raise ManifestError(f"cannot write {path}: use a .jsonl or .parquet file name")
    return path


# ---- synthetic manifests -----------------------------------------------------------------------------------

ASPECTS: dict[str, tuple[int, int]] = {"16:9": (16, 9), "9:16": (9, 16), "4:3": (4, 3), "1:1": (1, 1),
                                       "21:9": (21, 9)}
SHORT_SIDES = (360, 480, 720, 1080, 1440, 2160)
"""Short-side pixel heights of 360p ... 4K (2160p)."""


@dataclass(frozen=True)
class SyntheticProfile:
    """How a synthetic manifest is drawn."""

    aspects: dict[str, float]
    """Aspect-ratio name (a key of ASPECTS) -> probability."""
    short_sides: dict[int, float]
    """Short-side pixels -> probability."""
    seconds: tuple[float, float]
    """Duration range in seconds, drawn log-uniformly (short clips are commoner, as in cut datasets)."""
    fps: dict[float, float]
    """Frame rate -> probability."""
    audio_known: float = 0.9
    """Probability that a row carries audio_seconds."""


PROFILES: dict[str, SyntheticProfile] = {
    # A general mix: landscape-heavy web video with some portrait, square and cinema-scope clips.
    "mixed": SyntheticProfile({"16:9": 0.40, "9:16": 0.22, "4:3": 0.12, "1:1": 0.14, "21:9": 0.12},
                              {360: 0.10, 480: 0.14, 720: 0.28, 1080: 0.32, 1440: 0.07, 2160: 0.09},
                              (2.0, 30.0), {24.0: 0.22, 25.0: 0.2, 30.0: 0.35, 29.97: 0.08, 60.0: 0.15}),
    # Talking-head style: portrait and square phone video, shorter clips, little cinema-scope.
    "talking": SyntheticProfile({"16:9": 0.25, "9:16": 0.45, "4:3": 0.05, "1:1": 0.22, "21:9": 0.03},
                                {360: 0.08, 480: 0.17, 720: 0.35, 1080: 0.33, 1440: 0.04, 2160: 0.03},
                                (2.0, 20.0), {25.0: 0.3, 30.0: 0.45, 29.97: 0.1, 60.0: 0.15}),
}


def _pick(rng: np.random.Generator, table: dict) -> Any:
    keys = list(table)
    p = np.asarray([table[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def synthetic_manifest(n: int, seed: int = 0, profile: str = "mixed") -> list[ManifestRow]:
    """``n`` realistic rows drawn deterministically from ``seed``: aspect 16:9, 9:16, 4:3, 1:1, 21:9, 360p-4K
    (short side), 2-30 s, 24/25/29.97/30/60 fps; sizes are even pixel counts, as encoders require."""
    if profile not in PROFILES:
        raise ManifestError(f"unknown synthetic profile {profile!r}; choose one of {sorted(PROFILES)}")
    if n < 0:
        raise ManifestError(f"n={n}: a manifest needs a non-negative row count")
    prof = PROFILES[profile]
    rng = np.random.default_rng(np.random.SeedSequence([seed, sum(map(ord, profile))]))
    rows = []
    lo, hi = np.log(prof.seconds[0]), np.log(prof.seconds[1])
    for i in range(n):
        aw, ah = ASPECTS[_pick(rng, prof.aspects)]
        short = _pick(rng, prof.short_sides)
        long_side = 2 * round(short * max(aw, ah) / min(aw, ah) / 2)
        width, height = (long_side, short) if aw >= ah else (short, long_side)
        fps = float(_pick(rng, prof.fps))
        seconds = float(np.exp(rng.uniform(lo, hi)))
        frames = max(1, round(seconds * fps))
        audio = round(frames / fps, 3) if rng.random() < prof.audio_known else None
        rows.append(ManifestRow(f"synthetic/{profile}/{i:05d}.mp4", int(width), int(height), int(frames), fps,
                                audio))
    return rows


__all__ = ["ASPECTS", "FIELDS", "PROFILES", "SHORT_SIDES", "ManifestError", "ManifestRow", "ReadResult", "RowCheck",
           "RowProblem", "SkippedRow", "SyntheticProfile", "parse_row", "read_manifest", "synthetic_manifest",
           "write_manifest"]


# ---- the committed manifests -------------------------------------------------------------------------------

MANIFEST_DIR = Path(__file__).resolve().parent / "manifests"
SHIPPED: dict[str, tuple[str, int, int]] = {"mixed": ("mixed", 2000, 0), "talking": ("talking", 2000, 0)}
"""Committed manifest name -> (synthetic profile, rows, seed) it was generated with."""


def shipped_manifests() -> list[Path]:
    """Paths of the committed synthetic manifests (``s2vbench/data/manifests/*.jsonl``)."""
    return [MANIFEST_DIR / f"{name}.jsonl" for name in SHIPPED]


def regenerate_shipped(folder: Path = MANIFEST_DIR) -> list[Path]:
    """Write the committed manifests again from their profile and seed (the files are this output)."""
    return [write_manifest(synthetic_manifest(n, seed, profile), folder / f"{name}.jsonl")
            for name, (profile, n, seed) in SHIPPED.items()]


__all__ += ["MANIFEST_DIR", "SHIPPED", "regenerate_shipped", "shipped_manifests"]
