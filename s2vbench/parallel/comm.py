"""Our collectives, counted: bytes sent and received and wall time per collective kind.

Counting conventions (the analytic volumes in ``bench/analytic.py`` use the same):
- all-to-all of an N-byte buffer over p ranks: each rank sends and receives floor(N (p - 1) / p) bytes; the
  chunk a rank keeps for itself is not communication;
- point-to-point: the bytes of the tensors sent, and of those received;
- all-reduce: the payload, once;
- FSDP2's all-gather and reduce-scatter (seen through a dispatch mode over c10d ops, since FSDP2 issues them
  itself): a rank with an s-byte shard sends and receives s (p - 1) bytes; under HSDP, FSDP2's all-reduce of
  each reduced shard across the replica groups (``hsdp_all_reduce``): the payload, once, like ours. The
  counters cannot time them: the ops are asynchronous and the dispatch mode sees only their launch.

Time. The counters' ``seconds`` are main-thread wall time: a blocking all-to-all or all-reduce from call to
return, a ring exchange from post to the end of its wait (which spans the attention computed meanwhile: an
upper bound). The time of every collective that runs as a *work* (FSDP2's all-gathers and reduce-scatters, our
all-to-alls, the loss all-reduce) comes from :func:`collective_seconds` over a torch.profiler run of the
counted step: gloo executes each work on a background thread under a ``gloo:<op>`` profiler range, which we
match to the launching ``c10d::<op>`` (first in, first out per range name) and sum per kind; on NCCL the
collective kernels' device time is attributed to the launch. Caveat, on gloo: that range is the execution on
the worker thread (dequeue to completion), so it includes waiting for the slowest peer to join and it overlaps
compute, i.e. it is the collective's busy time, not the time a step lost to it (that is step time minus the
compute-only time); with more busy threads than cores it is also inflated by CPU contention. Timing the wait
of each work handle instead would measure only the exposed part, and FSDP2 waits inside its own hooks. gloo's
point-to-point send/recv run on the calling thread with no execution range, so ring exchanges keep the
counters' post-to-wait time.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode


@dataclass
class CommStat:
    """Totals of one collective kind on this rank."""

    calls: int = 0
    bytes_sent: int = 0
    bytes_recv: int = 0
    seconds: float = 0.0


@dataclass
class CommCounter:
    """Per-kind communication of this rank while the counter is active."""

    stats: dict[str, CommStat] = field(default_factory=dict)

    def record(self, kind: str, sent: int, recv: int, seconds: float) -> None:
        s = self.stats.setdefault(kind, CommStat())
        s.calls += 1
        s.bytes_sent += sent
        s.bytes_recv += recv
        s.seconds += seconds

    def total_sent(self) -> int:
        return sum(s.bytes_sent for s in self.stats.values())


_ACTIVE: list[CommCounter] = []


_OWN_ALL_REDUCE: list[bool] = [False]
"""Set while :func:`all_reduce_sum` runs, so the dispatch mode below does not count our all-reduce as FSDP's."""


class _FSDPCollectives(TorchDispatchMode):
    """Records FSDP2's flat-buffer all-gathers and reduce-scatters, and under HSDP its all-reduces (our own
    collectives use other c10d ops, except the all-reduce, which :func:`all_reduce_sum` flags)."""

    KINDS: ClassVar[dict[str, str]] = {"c10d._allgather_base_.default": "fsdp_all_gather",
                                       "c10d._reduce_scatter_base_.default": "fsdp_reduce_scatter",
                                       "c10d.allreduce_.default": "hsdp_all_reduce"}

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        # Without this, torch.compile refuses (and from then on skips) any compiled region called under the mode:
        # the counted step would run eagerly and so would every later step of the process (the compute-only rerun
        # included). FSDP2's collectives are issued by its eager hooks, outside compiled regions, so they are
        # still seen.
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kind = self.KINDS.get(str(func))
        if kind == "hsdp_all_reduce":
            if not _OWN_ALL_REDUCE[0]:
                moved = sum(nbytes(t) for t in args[0])
                _record(kind, moved, moved, 0.0)
        elif kind is not None:
            out, inp = args[0], args[1]
            shard, full = (inp, out) if kind == "fsdp_all_gather" else (out, inp)
            p = full.numel() // shard.numel()
            moved = nbytes(shard) * (p - 1)
            _record(kind, moved, moved, 0.0)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def count_comm(fsdp: bool = False):
    """Count every collective issued through this module inside the block, and with ``fsdp=True`` also
    FSDP2's own all-gathers and reduce-scatters (through a dispatch mode: not for timed runs)."""
    counter = CommCounter()
    _ACTIVE.append(counter)
    try:
        if fsdp:
            with _FSDPCollectives():
                yield counter
        else:
            yield counter
    finally:
        _ACTIVE.remove(counter)


LAUNCH_KINDS = {"c10d::_allgather_base_": "fsdp_all_gather", "c10d::_reduce_scatter_base_": "fsdp_reduce_scatter",
                "c10d::alltoall_base_": "all_to_all", "c10d::allreduce_": "all_reduce",
                "c10d::allgather_": "all_gather"}
"""The c10d op (as torch.profiler names it) that launches each collective kind we count. HSDP's all-reduces
launch the same op as ours; :func:`collective_seconds` tells them apart by :data:`OWN_ALL_REDUCE_RANGE`."""
OWN_ALL_REDUCE_RANGE = "s2vbench::all_reduce"
"""The profiler range around :func:`all_reduce_sum`: an ``allreduce_`` launch outside it is HSDP's."""
GLOO_RANGES = {"fsdp_all_gather": ("gloo:all_gather",), "all_gather": ("gloo:all_gather",),
               "fsdp_reduce_scatter": ("gloo:reduce_scatter", "gloo:all_reduce"), "all_to_all": ("gloo:all_to_all",),
               "all_reduce": ("gloo:all_reduce",), "hsdp_all_reduce": ("gloo:all_reduce",)}
"""gloo's execution ranges per kind (its reduce-scatter of one flat tensor runs as an all-reduce)."""


def collective_seconds(events) -> dict[str, dict[str, float]]:
    """Per collective kind, ``{"seconds", "calls", "launched"}``: the summed execution time of the profiled
    collectives (see the module docstring) and how many launches were matched to an execution range.

    ``events`` are a torch.profiler run's ``events()`` (FunctionEvents). A launch with CUDA kernel time (NCCL)
    counts that time; otherwise the first unmatched gloo range of its kind that starts after it."""
    def start(e) -> float:
        return e.time_range.start

    def inside(e, name: str) -> bool:
        parent = getattr(e, "cpu_parent", None)
        while parent is not None:
            if parent.name == name:
                return True
            parent = getattr(parent, "cpu_parent", None)
        return False

    def outermost(e) -> bool:  # a dispatch mode re-dispatching the op (count_comm's) records it twice, nested
        return not inside(e, e.name)

    launches = sorted((e for e in events if e.name in LAUNCH_KINDS and outermost(e)), key=start)
    ranges: dict[str, list] = {}
    for e in sorted((e for e in events if e.name.startswith("gloo:")), key=start):
        ranges.setdefault(e.name, []).append(e)
    out: dict[str, dict[str, float]] = {}
    for launch in launches:
        kind = LAUNCH_KINDS[launch.name]
        if kind == "all_reduce" and not inside(launch, OWN_ALL_REDUCE_RANGE):
            kind = "hsdp_all_reduce"
        stat = out.setdefault(kind, {"seconds": 0.0, "calls": 0, "launched": 0})
        stat["launched"] += 1
        device_us = getattr(launch, "device_time_total", 0.0) or 0.0
        if device_us > 0:
            stat["seconds"] += device_us / 1e6
            stat["calls"] += 1
            continue
        for name in GLOO_RANGES.get(kind, ()):
            queue = ranges.get(name, [])
            while queue and start(queue[0]) < start(launch):  # a range no launch of ours claimed (e.g. barrier)
                queue.pop(0)
            if queue:
                stat["seconds"] += queue.pop(0).time_range.elapsed_us() / 1e6
                stat["calls"] += 1
                break
    return out


def _record(kind: str, sent: int, recv: int, seconds: float) -> None:
    for c in _ACTIVE:
        c.record(kind, sent, recv, seconds)


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def all_reduce_sum(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Sum ``x`` in place over ``group`` (all ranks by default), counted as ``all_reduce``."""
    start = time.perf_counter()
    _OWN_ALL_REDUCE[0] = True
    try:
        with torch.profiler.record_function(OWN_ALL_REDUCE_RANGE):
            dist.all_reduce(x, group=group)
    finally:
        _OWN_ALL_REDUCE[0] = False
    _record("all_reduce", nbytes(x), nbytes(x), time.perf_counter() - start)
    return x


def all_to_all(x: torch.Tensor, scatter_dim: int, gather_dim: int, group: dist.ProcessGroup) -> torch.Tensor:
    """Split x into p chunks along ``scatter_dim``, send chunk j to rank j of the group, and concatenate the
    received chunks (in rank order) along ``gather_dim``."""
    p = dist.get_world_size(group)
    if p == 1:
        return x
    if x.shape[scatter_dim] % p:
        raise ValueError(f"all_to_all: dim {scatter_dim} of size {x.shape[scatter_dim]} does not split into {p} parts")
    send = torch.stack(x.chunk(p, dim=scatter_dim)).contiguous()
    recv = torch.empty_like(send)
    start = time.perf_counter()
    dist.all_to_all_single(recv, send, group=group)
    moved = nbytes(send) * (p - 1) // p
    _record("all_to_all", moved, moved, time.perf_counter() - start)
    return torch.cat(recv.unbind(0), dim=gather_dim)


class RingExchange:
    """Post a send to the next rank and a receive from the previous rank of a ring group; wait later."""

    def __init__(self, group: dist.ProcessGroup, kind: str = "ring_p2p", trace: list | None = None):
        self.group = group
        self.kind = kind
        self.trace = trace
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.next = dist.get_global_rank(group, (self.rank + 1) % self.size)
        self.prev = dist.get_global_rank(group, (self.rank - 1) % self.size)

    def start(self, tensors: list[torch.Tensor], label: str = "") -> tuple[list[torch.Tensor], object]:
        """Send ``tensors`` forward, receive same-shaped ones from behind; returns (buffers, handle)."""
        bufs = [torch.empty_like(t) for t in tensors]
        ops = [dist.P2POp(dist.isend, t.contiguous(), self.next, self.group) for t in tensors]
        ops += [dist.P2POp(dist.irecv, b, self.prev, self.group) for b in bufs]
        start = time.perf_counter()
        reqs = dist.batch_isend_irecv(ops)
        if self.trace is not None:
            self.trace.append(f"post {label}")
        return bufs, (reqs, start, sum(nbytes(t) for t in tensors), label)

    def wait(self, handle) -> None:
        reqs, start, moved, label = handle
        for r in reqs:
            r.wait()
        _record(self.kind, moved, moved, time.perf_counter() - start)
        if self.trace is not None:
            self.trace.append(f"wait {label}")


__all__ = ["GLOO_RANGES", "LAUNCH_KINDS", "OWN_ALL_REDUCE_RANGE", "CommCounter", "CommStat", "RingExchange", "all_reduce_sum", "all_to_all",
           "collective_seconds", "count_comm", "nbytes"]
