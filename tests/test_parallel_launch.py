"""The local launcher never hangs: a rank that raises, dies or stalls brings the run down with its cause, and
no rank outlives it."""

import os
import time

import pytest

from s2vbench.parallel.launch import RankFailed, run_ranks


def failing_worker(rank, world, pid_dir):
    import torch.distributed as dist

    _record_pid(pid_dir, rank)
    if rank == 1:
        raise RuntimeError("rank 1 broke mid-step")
    dist.barrier()  # rank 0 would wait here forever without the launcher
    return rank


def killed_worker(rank, world, pid_dir):
    import signal

    import torch.distributed as dist

    _record_pid(pid_dir, rank)
    if rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would: no traceback, no report
    dist.barrier()
    return rank


def stalled_worker(rank, world, pid_dir):
    import torch.distributed as dist

    _record_pid(pid_dir, rank)
    if rank == 1:
        time.sleep(600)  # stuck outside any collective: only rank 0's collective timeout can notice
    dist.barrier()
    return rank


def _record_pid(pid_dir, rank):
    with open(os.path.join(pid_dir, f"{rank}.pid"), "w") as f:
        f.write(str(os.getpid()))


def _assert_no_rank_survives(pid_dir, world):
    pids = [int(open(os.path.join(pid_dir, f"{r}.pid")).read()) for r in range(world)]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_raising_rank_brings_the_others_down_with_its_traceback(tmp_path):
    with pytest.raises(RankFailed, match="rank 1 broke mid-step") as e:
        run_ranks(failing_worker, 2, str(tmp_path), timeout_s=60)
    assert e.value.rank == 1
    _assert_no_rank_survives(tmp_path, 2)


def test_a_killed_rank_is_reported_with_its_exit_code(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(RankFailed, match="exited with code -9") as e:
        run_ranks(killed_worker, 2, str(tmp_path), timeout_s=60)
    assert e.value.rank == 1
    assert time.monotonic() - t0 < 45, "the launcher should notice a dead rank at once, not at the timeout"
    from s2vbench.bench.points import Point
    from s2vbench.bench.sweep import failure_record

    assert failure_record(Point("tiny", 2, "fsdp"), e.value).tags == ["oom"], "a sweep records it as OOM"
    _assert_no_rank_survives(tmp_path, 2)


def test_a_stalled_rank_ends_the_run_at_the_collective_timeout(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(RankFailed) as e:
        run_ranks(stalled_worker, 2, str(tmp_path), timeout_s=5)
    assert e.value.rank == 0, "rank 0's barrier times out while rank 1 sleeps"
    assert time.monotonic() - t0 < 60
    _assert_no_rank_survives(tmp_path, 2)
