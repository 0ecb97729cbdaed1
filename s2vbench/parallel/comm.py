"""Our collectives, counted: bytes sent and received and wall time per collective kind.

Counting conventions (the analytic volumes in ``bench/analytic.py`` use the same):
- all-to-all of an N-byte buffer over p ranks: each rank sends and receives floor(N (p - 1) / p) bytes; the
  chunk a rank keeps for itself is not communication;
- point-to-point: the bytes of the tensors sent, and of those received;
- all-reduce: the payload, once;
- FSDP2's all-gather and reduce-scatter (seen through a dispatch mode over c10d ops, since FSDP2 issues them
  itself): a rank with an s-byte shard sends and receives s (p - 1) bytes. Their time is not recorded: the
  ops are asynchronous and the dispatch mode sees only their launch.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

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


class _FSDPCollectives(TorchDispatchMode):
    """Records FSDP2's flat-buffer all-gathers and reduce-scatters (our own collectives use other c10d ops)."""

    KINDS = {"c10d._allgather_base_.default": "fsdp_all_gather",
             "c10d._reduce_scatter_base_.default": "fsdp_reduce_scatter"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kind = self.KINDS.get(str(func))
        if kind is not None:
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


def _record(kind: str, sent: int, recv: int, seconds: float) -> None:
    for c in _ACTIVE:
        c.record(kind, sent, recv, seconds)


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


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


__all__ = ["CommCounter", "CommStat", "RingExchange", "all_to_all", "count_comm", "nbytes"]
