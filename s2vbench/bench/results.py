"""The one results schema, environment capture and atomic writer. Every benchmark writes through here.

A results file is JSON: ``{"schema": "s2vbench.results", "schema_version": N, "records": [...]}``. Each record
carries the full config it measured, the environment it ran in, and metrics with units and a statement of how
each was obtained. :class:`ResultsLog` rewrites the file atomically (temp file, fsync, rename, fsync of the
folder) after every record, so an interrupted sweep keeps everything it finished and never leaves a torn file.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import os
import platform
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

SCHEMA = "s2vbench.results"
SCHEMA_VERSION = 1

STATUSES = ("measured", "predicted", "not_measured")
"""measured: timed or counted in this run; predicted: from the analytic model; not_measured: no figure exists."""


class ResultsError(RuntimeError):
    """A results file that cannot be read or written as this schema."""


@dataclass
class Metric:
    """One number with its unit and provenance."""

    name: str
    """What was measured, e.g. "step_time"."""
    value: float | None
    """The figure (None when status is not_measured)."""
    unit: str
    """Unit of value: s, GiB, TFLOP/s, GB/s, bytes, tokens, 1 (dimensionless) ..."""
    how: str
    """How it was obtained (timer, statistic, warm-up excluded, ...)."""
    status: str = "measured"
    """One of STATUSES."""
    stats: dict[str, float] = field(default_factory=dict)
    """Optional spread: median, min, max, n, iqr ... in the same unit."""

    @classmethod
    def failed(cls, name: str, unit: str, error: BaseException) -> "Metric":
        """Not measured because measuring it raised ``error``, which the record keeps."""
        return cls(name, None, unit, f"failed: {type(error).__name__}: {error}"[:300], status="not_measured")

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ResultsError(f"Metric {self.name!r}: status {self.status!r} is not one of {STATUSES}")
        if self.status == "not_measured" and self.value is not None:
            raise ResultsError(f"Metric {self.name!r} is not_measured but has a value; a figure that was not "
                               f"measured is reported without one")
        if self.status != "not_measured" and self.value is None:
            raise ResultsError(f"Metric {self.name!r} has no value; mark it status='not_measured'")


@dataclass
class Record:
    """One measured point: what ran (config), where (environment), and what came out (metrics)."""

    kind: str
    """Which harness produced it, e.g. "model_smoke", "iteration", "attention_kernel"."""
    name: str
    """The point's label within the run."""
    config: dict[str, Any]
    """The full configuration of the point."""
    metrics: list[Metric]
    """Figures with units."""
    environment: dict[str, Any] = field(default_factory=dict)
    """From capture_environment()."""
    tags: list[str] = field(default_factory=list)
    """Markers such as "oversubscribed" or "predicted"."""
    notes: str = ""
    """Free text for caveats."""
    created_utc: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    """When the record was made."""

    def metric(self, name: str) -> Metric:
        for m in self.metrics:
            if m.name == name:
                return m
        raise KeyError(f"record {self.name!r} has no metric {name!r}; it has {[m.name for m in self.metrics]}")


def step_times(record: Record, metric: str = "step_time") -> list[float]:
    """The timed steps (s) of a record's measured ``metric`` (``step_time``, ``inference_step_time``), in step
    order; [] when it has none."""
    try:
        m = record.metric(metric)
    except KeyError:
        return []
    if m.value is None:
        return []
    steps = sorted((int(k[4:]), v) for k, v in m.stats.items() if k.startswith("step") and k[4:].isdigit())
    return [v for _, v in steps] or [m.value]


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, enums, paths, tuples, torch dtypes/devices and numpy scalars -> plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return to_jsonable(obj.item())
    return str(obj)  # torch.dtype, torch.device and other small value types


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str | None:
    try:
        import pynvml  # nvidia-ml-py

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else v
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def capture_environment() -> dict[str, Any]:
    """Host, device, driver, CUDA, torch, triton and deepspeed versions, and the git commit."""
    import torch

    env: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "deepspeed": _version("deepspeed"),
        "transformers": _version("transformers"),
        "numpy": _version("numpy"),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "driver": _nvidia_driver(),
        "device": "cpu",
        "device_count": 0,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None,
    }
    status = _git("status", "--porcelain", "--untracked-files=no")
    if status is not None:
        env["git_dirty"] = bool(status)
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name(0)
        env["device_count"] = torch.cuda.device_count()
        props = torch.cuda.get_device_properties(0)
        env["device_memory_gib"] = round(props.total_memory / 2**30, 2)
    return env


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` so that readers see either the old file or the whole new one."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dfd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def atomic_save_figure(fig, path: str | Path, **savefig_kwargs) -> None:
    """Save a matplotlib figure (PNG, or the format of ``path``'s suffix) so that readers see either the old
    image or the whole new one, as the reports beside it are written."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", **savefig_kwargs)
    atomic_write_bytes(path, buf.getvalue())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


_NON_FINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}
"""How ``to_jsonable`` writes non-finite floats (JSON has none): read back as the floats they were."""

_FIX = ("it was not written by this s2vbench, or was edited or cut short; restore it from a copy or re-run the "
        "benchmark that wrote it")


def is_int(v: Any) -> bool:
    """An integer as JSON and TOML give it: a bool is not one (``True`` would pass as 1)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A number as JSON and TOML give it, bools excluded."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def has_type(v: Any, kind: type) -> bool:
    """``isinstance(v, kind)``, except that a bool is not an int."""
    return is_int(v) if kind is int else isinstance(v, kind)


def _fields(d: Any, cls: type, where: str) -> dict[str, Any]:
    """``d`` as the keyword arguments of dataclass ``cls``: an object with its required fields and no others."""
    if not isinstance(d, dict):
        raise ResultsError(f"{where} is a JSON {type(d).__name__}, not an object; {_FIX}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    missing = [n for n, f in fields.items() if n not in d and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if unknown or missing:
        raise ResultsError(f"{where}: " + "; ".join(
            ([f"unknown field(s) {unknown}"] if unknown else []) + ([f"missing field(s) {missing}"] if missing else []))
            + f" (a {cls.__name__} has {list(fields)}); {_FIX}")
    return dict(d)


def _check_type(where: str, field: str, value: Any, kind: type | tuple[type, ...], what: str) -> None:
    if not isinstance(value, kind):
        raise ResultsError(f"{where}: {field} = {value!r:.80} must be {what}; {_FIX}")


def _figure(where: str, field: str, value: Any) -> float | int | None:
    """A metric's value or statistic: a number or None (non-finite floats as ``to_jsonable`` wrote them)."""
    if isinstance(value, str) and value in _NON_FINITE:
        return _NON_FINITE[value]
    if value is not None and not is_number(value):
        raise ResultsError(f"{where}: {field} = {value!r:.80} must be a number or null; {_FIX}")
    return value


def _metric_from_dict(d: Any, where: str) -> Metric:
    m = _fields(d, Metric, where)
    for key in ("name", "unit", "how", "status"):
        if key in m:
            _check_type(where, key, m[key], str, "a string")
    where = f"{where} ({m['name']!r})"
    m["value"] = _figure(where, "value", m["value"])
    _check_type(where, "stats", m.get("stats", {}), dict, "an object of figures")
    m["stats"] = {k: _figure(where, f"stats[{k!r}]", v) for k, v in m.get("stats", {}).items()}
    try:
        return Metric(**m)
    except ResultsError as e:  # its honesty rules, told where the metric is
        raise ResultsError(f"{where}: {e}; {_FIX}") from None


def _record_from_dict(d: Any, where: str = "record") -> Record:
    """A record read back, every field checked: a results file from elsewhere is refused with what is wrong
    and where, instead of failing later in whatever reads the field."""
    r = _fields(d, Record, where)
    for key, kind, what in (("kind", str, "a string"), ("name", str, "a string"), ("config", dict, "an object"),
                            ("metrics", list, "a list of metrics"), ("environment", dict, "an object"),
                            ("tags", list, "a list of strings"), ("notes", str, "a string"),
                            ("created_utc", str, "a string")):
        if key in r:
            _check_type(where, key, r[key], kind, what)
    where = f"{where} ({r['name']!r})"
    if not all(isinstance(t, str) for t in r.get("tags", [])):
        raise ResultsError(f"{where}: tags = {r['tags']!r:.80} must be a list of strings; {_FIX}")
    r["metrics"] = [_metric_from_dict(m, f"{where}, metric {i}") for i, m in enumerate(r["metrics"])]
    return Record(**r)


def read_results(path: str | Path) -> list[Record]:
    """Records of a results file, after checking its schema, version and every record's fields."""
    path = Path(path)
    if path.is_dir():
        raise ResultsError(f"{path} is a folder, not a results file; pass the results.json inside it")
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"results file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultsError(f"results file {path} is not valid JSON ({e}); {_FIX}") from None
    except OSError as e:
        raise ResultsError(f"results file {path} cannot be read ({e.strerror or e})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        schema = doc.get("schema") if isinstance(doc, dict) else None
        raise ResultsError(f"{path} is not an s2vbench results file (schema {schema!r}); pass a results.json that "
                           f"s2vbench wrote")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ResultsError(f"{path} has schema_version {doc.get('schema_version')}, this s2vbench reads "
                           f"{SCHEMA_VERSION}; re-run the benchmark or use the matching s2vbench version")
    if not isinstance(doc.get("records"), list):
        raise ResultsError(f"{path} has no list of records ('records' is "
                           f"{'missing' if 'records' not in doc else type(doc['records']).__name__}); {_FIX}")
    return [_record_from_dict(r, f"{path}: record {i}") for i, r in enumerate(doc["records"])]


class ResultsLog:
    """A results file that grows one record at a time, each append atomically rewriting the whole file.

    Opening an existing file keeps its records (so a resumed sweep appends); ``environment`` is captured once
    and attached to records that have none."""

    def __init__(self, path: str | Path, environment: dict[str, Any] | None = None, resume: bool = True):
        self.path = Path(path)
        self.environment = capture_environment() if environment is None else environment
        self.records: list[Record] = []
        if self.path.exists():
            # read even when not resuming: a file that is not a readable results file (cut short, edited, another
            # tool's) is refused rather than overwritten, so that nothing in it is lost
            try:
                records = read_results(self.path)
            except ResultsError as e:
                raise ResultsError(f"{e}. It was left untouched: repair it or move it aside, or write to another "
                                   f"folder") from None
            if resume:
                self.records = records

    def append(self, record: Record) -> Record:
        if not record.environment:
            record.environment = self.environment
        self.records.append(record)
        self.flush()
        return record

    def extend(self, records: Iterable[Record]) -> None:
        for r in records:
            self.append(r)

    def flush(self) -> None:
        atomic_write_json(self.path, {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "records": self.records})

    def done(self, name: str) -> bool:
        """Whether a record with this name is already in the file (to skip finished points on resume)."""
        return any(r.name == name for r in self.records)


def check_output_folder(folder, flag: str = "--out"):
    """Make ``folder`` (and its parents) and create and remove a file in it, so that an output that is a file,
    cannot be made or is not writable fails at once, naming ``flag``, not at the first write after minutes of
    measuring. Returns the folder as a Path."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {folder} is a file, not a folder; pass a folder to write into")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".s2vbench-write-check-"):
            pass
    except OSError as e:
        raise ValueError(f"{flag} {folder}: cannot write there ({e.strerror or e}); pass a folder you can "
                         f"write") from None
    return folder


def check_output_file(path, flag: str = "--out", suffixes: tuple[str, ...] = ()):
    """Like :func:`check_output_folder` for a file to write: ``path`` and its siblings with ``suffixes``
    (written beside it) must not be folders, and the folder holding them must be writable. Returns the Path."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; {flag} names the file to write, e.g. "
                         f"{path / 'profile.json'}")
    for other in (path.with_suffix(s) for s in suffixes):
        if other.is_dir():
            raise ValueError(f"{flag} {path}: {other}, written beside it, is a folder; move it away or pass "
                             f"another {flag}")
    check_output_folder(path.parent, flag=f"{flag} {path}: its folder")
    return path


__all__ = ["Metric", "Record", "ResultsError", "ResultsLog", "SCHEMA", "SCHEMA_VERSION", "STATUSES",
           "atomic_save_figure", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "capture_environment",
           "check_output_file", "check_output_folder", "has_type", "is_int", "is_number", "read_results", "step_times", "to_jsonable"]
