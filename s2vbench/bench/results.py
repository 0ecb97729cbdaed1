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
    """Write ``text`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
        with os.fdopen(fd, "w") as f:
            f.write(text)
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


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def _record_from_dict(d: dict[str, Any]) -> Record:
    d = dict(d)
    d["metrics"] = [Metric(**m) for m in d.get("metrics", [])]
    return Record(**d)


def read_results(path: str | Path) -> list[Record]:
    """Records of a results file, after checking its schema and version."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ResultsError(f"results file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"results file {path} is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ResultsError(f"{path} is not an s2vbench results file (schema {doc.get('schema') if isinstance(doc, dict) else None!r})")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ResultsError(f"{path} has schema_version {doc.get('schema_version')}, this s2vbench reads "
                           f"{SCHEMA_VERSION}; re-run the benchmark or use the matching s2vbench version")
    return [_record_from_dict(r) for r in doc["records"]]


class ResultsLog:
    """A results file that grows one record at a time, each append atomically rewriting the whole file.

    Opening an existing file keeps its records (so a resumed sweep appends); ``environment`` is captured once
    and attached to records that have none."""

    def __init__(self, path: str | Path, environment: dict[str, Any] | None = None, resume: bool = True):
        self.path = Path(path)
        self.environment = capture_environment() if environment is None else environment
        self.records: list[Record] = read_results(self.path) if resume and self.path.exists() else []

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


__all__ = ["Metric", "Record", "ResultsError", "ResultsLog", "SCHEMA", "SCHEMA_VERSION", "STATUSES",
           "atomic_write_json", "atomic_write_text", "capture_environment", "read_results", "step_times",
           "to_jsonable"]
