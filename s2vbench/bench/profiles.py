"""Hardware profiles for the performance model: peaks, bandwidths, latencies and size-dependent efficiencies.

A profile is a JSON file. Every figure carries its source in ``sources``: ``datasheet`` (the vendor's
published number, with where), ``measured`` (by ``s2vbench calibrate`` on that machine, with the date), or
``assumed`` (neither: a stated guess that a calibration run should replace). The shipped GPU profiles were
not measured here; the CPU profile is written by each calibration run.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .results import is_int, is_number

PROFILE_DIR = Path(__file__).parent / "profiles"


class ProfileError(ValueError):
    """A hardware profile that is missing or malformed."""


@dataclass(frozen=True)
class EfficiencyCurve:
    """Achieved fraction of peak as a function of one call's FLOPs, log-linear between points, flat outside."""

    flops: tuple[float, ...]
    """FLOPs of one call, ascending."""
    efficiency: tuple[float, ...]
    """Fraction of the profile's peak achieved at that size."""

    def __post_init__(self) -> None:
        if len(self.flops) != len(self.efficiency) or not self.flops:
            raise ProfileError("an efficiency curve needs as many efficiencies as sizes, at least one")
        if any(b <= a for a, b in zip(self.flops, self.flops[1:])):
            raise ProfileError(f"efficiency curve sizes must ascend strictly: {self.flops}")
        if any(not 0 < e <= 1.5 for e in self.efficiency):
            raise ProfileError(f"efficiencies must lie in (0, 1.5]: {self.efficiency}")

    def __call__(self, flops: float) -> float:
        if flops <= self.flops[0]:
            return self.efficiency[0]
        if flops >= self.flops[-1]:
            return self.efficiency[-1]
        i = bisect.bisect_right(self.flops, flops)
        x0, x1 = math.log(self.flops[i - 1]), math.log(self.flops[i])
        w = (math.log(flops) - x0) / (x1 - x0)
        return self.efficiency[i - 1] * (1 - w) + self.efficiency[i] * w


COLLECTIVE_KINDS = ("all_gather", "reduce_scatter", "all_to_all", "all_reduce", "p2p")
"""The collectives the model charges (``perfmodel.collective_time``)."""


@dataclass(frozen=True)
class Link:
    """Alpha-beta cost of one hop class: t = latency per step + bytes / bandwidth."""

    bandwidth: float
    """Achievable bytes/s per GPU in one direction."""
    latency: float
    """Seconds per algorithm step (alpha)."""
    kinds: dict[str, tuple[float, float]] = field(default_factory=dict)
    """(bandwidth, latency) of a collective kind measured on its own: each kind runs its own algorithm (gloo's
    reduce-scatter, for one, costs about twice its all-gather), so one pooled alpha and beta misprice them. A
    kind's pair prices the whole collective as t = (p - 1) alpha + (p - 1)/p bytes / bandwidth (p2p: alpha +
    bytes / bandwidth), all_reduce included: its pair covers both of its phases, where the pooled pair charges
    an all_reduce twice. Kinds not listed cost the pooled figures above."""

    def __post_init__(self) -> None:
        kinds = {}
        for kind, pair in dict(self.kinds).items():
            if kind not in COLLECTIVE_KINDS:
                raise ProfileError(f"a link cost for unknown collective kind {kind!r}; known: "
                                   f"{', '.join(COLLECTIVE_KINDS)}")
            try:
                bandwidth, latency = (float(v) for v in pair)
            except (TypeError, ValueError):
                bandwidth, latency = -1.0, -1.0
            if not (bandwidth > 0 and latency >= 0):
                raise ProfileError(f"the link cost of {kind} must be (bandwidth bytes/s > 0, latency s >= 0), "
                                   f"not {pair!r}")
            kinds[kind] = (bandwidth, latency)
        object.__setattr__(self, "kinds", kinds)  # a JSON round trip gives lists: one form, so profiles compare
        if not (self.bandwidth > 0 and self.latency >= 0):
            raise ProfileError(f"a link needs a positive bandwidth and a non-negative latency: "
                               f"{self.bandwidth!r} B/s, {self.latency!r} s")

    def cost(self, kind: str) -> tuple[float, float]:
        """(bandwidth bytes/s, latency s) of one collective kind on this link."""
        return self.kinds.get(kind, (float(self.bandwidth), float(self.latency)))


_FORMAT = ("see s2vbench/bench/profiles/h100-sxm.json for the format, or write a profile with "
           "`s2vbench calibrate --out FILE`")


def _figure(where: str, field: str, value, zero: bool = False) -> float:
    """A finite JSON number, > 0 (>= 0 with ``zero``): a negative peak or a zero node size would otherwise give
    negative times or a division by zero far from the file."""
    if not is_number(value) or not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ProfileError(f"{where}: {field} = {value!r} must be a {'non-negative' if zero else 'positive'} "
                           f"number; {_FORMAT}")
    return float(value)


def _link(where: str, field: str, d) -> Link:
    if not isinstance(d, dict) or not {"bandwidth", "latency"} <= set(d) <= {"bandwidth", "latency", "kinds"}:
        raise ProfileError(f"{where}: {field} must be an object with bandwidth (bytes/s), latency (s) and optional "
                           f"kinds, got {d!r:.100}; {_FORMAT}")
    kinds = d.get("kinds", {})
    if not isinstance(kinds, dict):
        raise ProfileError(f"{where}: {field}.kinds must be an object of collective kind -> [bandwidth, latency]; "
                           f"{_FORMAT}")
    try:
        return Link(_figure(where, f"{field}.bandwidth", d["bandwidth"]),
                    _figure(where, f"{field}.latency", d["latency"], zero=True), kinds)
    except ProfileError as exc:
        raise ProfileError(str(exc) if str(exc).startswith(where) else f"{where}: {field}: {exc}") from None


def _curve(where: str, field: str, d) -> EfficiencyCurve:
    if not isinstance(d, dict) or set(d) != {"flops", "efficiency"} or not all(
            isinstance(d[k], (list, tuple)) and all(is_number(v) and math.isfinite(v) for v in d[k])
            for k in ("flops", "efficiency")):
        raise ProfileError(f"{where}: {field} must be an object of two lists of numbers, flops (ascending) and "
                           f"efficiency, got {d!r:.100}; {_FORMAT}")
    try:
        return EfficiencyCurve(tuple(d["flops"]), tuple(d["efficiency"]))
    except ProfileError as exc:
        raise ProfileError(f"{where}: {field}: {exc}; {_FORMAT}") from None


@dataclass(frozen=True)
class HardwareProfile:
    """One accelerator and its interconnect."""

    name: str
    """Registry key, e.g. "h100-sxm"."""
    peak_flops: float
    """Dense peak FLOP/s in the compute dtype (bf16 tensor cores on GPU; float32 on CPU)."""
    memory_bandwidth: float
    """Device memory bandwidth, bytes/s (HBM on GPU, DRAM on CPU)."""
    memory_capacity: float
    """Device memory, bytes."""
    intra_node: Link
    """NVLink (or shared memory for gloo on one host)."""
    inter_node: Link
    """The network between nodes, per GPU."""
    host_link: float
    """Host-device bytes/s in one direction (PCIe), for offload."""
    gpus_per_node: int
    """Devices per node."""
    matmul: EfficiencyCurve
    """Achieved fraction of peak for a matmul of a given size."""
    attention: EfficiencyCurve
    """Achieved fraction of peak for one fused attention call."""
    attention_backward: EfficiencyCurve | None = None
    """Achieved fraction of peak for the backward of an attention call whose forward has the given FLOPs, counted
    at ``perfmodel.ATTENTION_BACKWARD_FLOPS`` times them; None: the forward curve."""
    comm_overlaps_compute: bool = True
    """Whether collectives run beside compute (NCCL on its own SMs and copy engines). False for gloo on a CPU whose
    cores the ranks' compute threads fill: nothing hides, every collective is exposed."""
    op_overhead: float = 0.0
    """Seconds of host work per dispatched op that no device work hides: eager dispatch and autograd bookkeeping
    on a CPU (measured by calibration); 0 on GPU, where launches run ahead of the kernels."""
    op_overhead_sharded: float = 0.0
    """The same per op of a step under FSDP, whose DTensor parameters, unit hooks and DTensor optimizer make each
    op dearer to dispatch (measured by calibration under the fake process group)."""
    rank_skew: float = 0.0
    """Fraction of the compute between two collectives that a collective also waits, on average, for the
    slowest rank: ranks drifting apart on shared, noisy cores (measured by calibration); 0 on dedicated GPUs."""
    elementwise_bandwidth: float | None = None
    """Bytes/s that eager elementwise ops (norms, modulation, RoPE, activations and their backwards, each writing
    a fresh output) read and write, by calibration's microbenchmark; None: ``memory_bandwidth``."""
    elementwise_factor: float = 1.0
    """Multiplier on the modelled elementwise traffic time, fitted on end-to-end compute-only steps by calibration;
    1 when never fitted."""
    sources: dict[str, str] = field(default_factory=dict)
    """Per field: datasheet, measured or assumed, and where from."""

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def elementwise_rate(self) -> float:
        """Bytes/s the model charges elementwise traffic at."""
        return self.memory_bandwidth if self.elementwise_bandwidth is None else self.elementwise_bandwidth

    @classmethod
    def from_dict(cls, d: dict, source: str | Path | None = None) -> HardwareProfile:
        """A profile from its JSON form, every field checked; ``source`` (the file) is named in the errors."""
        where = f"hardware profile {source}" if source is not None else "hardware profile"
        if not isinstance(d, dict):
            raise ProfileError(f"{where} is a JSON {type(d).__name__}, not an object; {_FORMAT}")
        where = f"{where} ({d.get('name', '?')!r})" if source is None else where
        factor = d.get("elementwise_factor", 1.0)
        if is_number(factor) and factor != 1.0 and "elementwise_bandwidth" not in d:
            raise ProfileError(f"{where} was written by an older s2vbench (its "
                               f"elementwise_factor was fitted to an assumed traffic that the model now counts "
                               f"from the model's ops); re-run `s2vbench calibrate --out FILE` to write a current one")
        if "fixed_overhead" in d and "op_overhead" not in d:
            raise ProfileError(f"{where} was written by an older s2vbench (it has "
                               f"fixed_overhead, which the model replaced by a measured op_overhead); re-run "
                               f"`s2vbench calibrate --out FILE` to write a current one")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        missing = [n for n, f in fields.items() if n not in d and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if unknown or missing:  # a misspelt optional field would otherwise silently keep its default
            raise ProfileError(f"{where}: " + "; ".join(
                ([f"unknown field(s) {unknown}"] if unknown else []) + ([f"missing field(s) {missing}"] if missing
                                                                         else [])) + f"; {_FORMAT}")
        name = d["name"]
        if not isinstance(name, str) or not name:
            raise ProfileError(f"{where}: name = {name!r} must be a non-empty string; {_FORMAT}")
        gpus = d["gpus_per_node"]
        if not is_int(gpus) or gpus < 1:
            raise ProfileError(f"{where}: gpus_per_node = {gpus!r} must be a positive integer (devices per node); "
                               f"{_FORMAT}")
        overlaps = d.get("comm_overlaps_compute", True)
        if not isinstance(overlaps, bool):  # bool("false") is True
            raise ProfileError(f"{where}: comm_overlaps_compute = {overlaps!r} must be true or false; {_FORMAT}")
        sources = d.get("sources", {})
        if not isinstance(sources, dict) or not all(isinstance(v, str) for v in sources.values()):
            raise ProfileError(f"{where}: sources must be an object of strings (where each figure came from); "
                               f"{_FORMAT}")
        ew_bw = d.get("elementwise_bandwidth")
        return cls(name=name, peak_flops=_figure(where, "peak_flops", d["peak_flops"]),
                   memory_bandwidth=_figure(where, "memory_bandwidth", d["memory_bandwidth"]),
                   memory_capacity=_figure(where, "memory_capacity", d["memory_capacity"]),
                   intra_node=_link(where, "intra_node", d["intra_node"]),
                   inter_node=_link(where, "inter_node", d["inter_node"]),
                   host_link=_figure(where, "host_link", d["host_link"]), gpus_per_node=gpus,
                   matmul=_curve(where, "matmul", d["matmul"]), attention=_curve(where, "attention", d["attention"]),
                   attention_backward=(None if d.get("attention_backward") is None else
                                       _curve(where, "attention_backward", d["attention_backward"])),
                   comm_overlaps_compute=overlaps,
                   op_overhead=_figure(where, "op_overhead", d.get("op_overhead", 0.0), zero=True),
                   op_overhead_sharded=_figure(where, "op_overhead_sharded",
                                               d.get("op_overhead_sharded", d.get("op_overhead", 0.0)), zero=True),
                   rank_skew=_figure(where, "rank_skew", d.get("rank_skew", 0.0), zero=True),
                   elementwise_bandwidth=None if ew_bw is None else _figure(where, "elementwise_bandwidth", ew_bw),
                   elementwise_factor=_figure(where, "elementwise_factor", factor, zero=True), sources=dict(sources))

    def save(self, path: str | Path) -> Path:
        from .results import atomic_write_json

        atomic_write_json(path, self.to_dict())
        return Path(path)


def shipped_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILE_DIR.glob("*.json"))


_DEVICE_PROFILES = ((r"\bH200\b(?!.*\bNVL\b)", "h200"),
                    (r"\bA100\b(?=.*80GB)(?!.*PCIE)", "a100-80gb"),
                    (r"\bH100\b(?!.*\b(PCIE|NVL)\b)", "h100-sxm"))
"""CUDA device names each shipped profile describes: the SXM parts of its datasheet. A GH200, an H200 NVL, an
H100 PCIe or NVL and a 40 GB A100 differ in peak, bandwidth or capacity, so none of them gets a profile."""


def profile_for_device(device_name: str | None) -> str | None:
    """The shipped profile of a CUDA device name (``NVIDIA H200`` -> ``h200``), or None when no shipped profile
    describes it (CPUs included): predicting with another device's figures would pass for this one's."""
    name = (device_name or "").upper()
    return next((profile for pattern, profile in _DEVICE_PROFILES if re.search(pattern, name)), None)


def load_profile(name_or_path: str | Path) -> HardwareProfile:
    """A shipped profile by name (``h100-sxm``, ``h200``, ``a100-80gb``), a JSON file of one, or the
    ``calibration.json`` of ``s2vbench run`` (its fitted CPU profile)."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ProfileError(f"no hardware profile {str(name_or_path)!r}; shipped: {', '.join(shipped_profiles())}, "
                           f"or pass a JSON file written by `s2vbench calibrate`")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"hardware profile {path} is not valid JSON ({exc}); {_FORMAT}") from None
    if isinstance(doc, dict) and "name" not in doc and isinstance(doc.get("profile"), dict):
        doc = doc["profile"]  # the calibration.json of `s2vbench run`: its fitted profile
    return HardwareProfile.from_dict(doc, source=path)


__all__ = [
    "COLLECTIVE_KINDS",
    "PROFILE_DIR",
    "EfficiencyCurve",
    "HardwareProfile",
    "Link",
    "ProfileError",
    "load_profile",
    "profile_for_device",
    "shipped_profiles",
]
