"""Run a function on N local processes with a process group, never hanging.

Every process gets ``init_process_group`` with a timeout, so each collective has one. The parent watches
all ranks: the first rank that raises (or dies) brings the others down, and its traceback is re-raised in
the parent as :class:`RankFailed` (a rank that died unreported, killed by the OOM killer say, is named over
the peers it left failing in a collective); a run that outlives its deadline is killed and reported with the ranks
that had not finished. Used by the tests and by local (CPU, gloo) benchmark points.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
import queue as _queue
import socket
import time
import traceback
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


class RankFailed(RuntimeError):
    """A rank raised or died; the message carries its traceback."""

    def __init__(self, rank: int, detail: str):
        super().__init__(f"rank {rank} failed:\n{detail}")
        self.rank = rank


def default_backend() -> str:
    """NCCL for the GPUs' collectives where CUDA is present, with gloo for any on host tensors (NCCL refuses
    those); gloo alone on CPU."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(fn: Callable, rank: int, world_size: int, port: int, backend: str, timeout_s: float, results,
            args: tuple, threads: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(threads)
    try:
        dist.init_process_group(backend, rank=rank, world_size=world_size,
                                timeout=_dt.timedelta(seconds=timeout_s))
        out = fn(rank, world_size, *args)
        # serialise here: tensors sent through the queue would be shared-memory handles that die with this process
        buf = io.BytesIO()
        torch.save(out, buf)
        results.put((rank, True, buf.getvalue()))
    except BaseException:  # noqa: BLE001 - every failure must reach the parent
        results.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:
                pass


def join_fake_group(world_size: int, rank: int = 0) -> None:
    """Leave this process's group and join torch's "fake" one as ``rank`` of ``world_size``: every collective
    returns at once with buffers of the right shapes, so one process does exactly one rank's compute."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        dist.destroy_process_group()
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=world_size)


DEATH_GRACE_S = 1.0
"""How long a rank's failure report waits for a peer's death to show: a killed rank reports nothing, and the
peers it leaves in a collective fail with a connection reset that would otherwise hide the cause."""


def _dead_without_report(procs, reported) -> int | None:
    for r, p in enumerate(procs):
        if r not in reported and p.exitcode not in (None, 0):
            return r
    return None


def _death(code: int) -> str:
    why = " (SIGKILL: the kernel's OOM killer, or a kill -9)" if code == -9 else ""
    return f"process exited with code {code}{why} without reporting"


def _raise_root_cause(procs, reported, rank: int, payload: str):
    deadline = time.monotonic() + DEATH_GRACE_S
    reported = set(reported) | {rank}
    while time.monotonic() < deadline:
        dead = _dead_without_report(procs, reported)
        if dead is not None:
            last = payload.strip().splitlines()[-1] if payload.strip() else ""
            raise RankFailed(dead, f"{_death(procs[dead].exitcode)}; rank {rank} then failed with: {last}")
        time.sleep(0.05)
    raise RankFailed(rank, payload)


def run_ranks(fn: Callable[..., Any], world_size: int, *args: Any, backend: str = "gloo", timeout_s: float = 120.0,
              threads_per_rank: int = 1) -> list[Any]:
    """``fn(rank, world_size, *args)`` on ``world_size`` spawned processes; returns the per-rank results.

    ``fn`` must be importable by name (a module-level function) and its results picklable."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(fn, r, world_size, port, backend, timeout_s, results, args,
                                               threads_per_rank), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout_s + 30  # the collectives' own timeout fires first
    out: dict[int, Any] = {}
    try:
        while len(out) < world_size:
            try:
                rank, ok, payload = results.get(timeout=0.2)
            except _queue.Empty:
                dead = _dead_without_report(procs, out)
                if dead is not None:
                    raise RankFailed(dead, _death(procs[dead].exitcode)) from None
                if time.monotonic() > deadline:
                    missing = [r for r in range(world_size) if r not in out]
                    raise TimeoutError(f"ranks {missing} did not finish within {timeout_s:.0f} s") from None
                continue
            if not ok:
                _raise_root_cause(procs, out, rank, payload)
            out[rank] = torch.load(io.BytesIO(payload), weights_only=False)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [out[r] for r in range(world_size)]


__all__ = ["RankFailed", "default_backend", "free_port", "join_fake_group", "run_ranks"]
