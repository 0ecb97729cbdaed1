"""Paths that run only on a GPU, run here against fakes: NVML's device matching and sampling, and every rank
stopping together when one runs out of memory (the CUDA path's flag all-reduce, on gloo)."""

import sys
import time
import types
from types import SimpleNamespace

import pytest
import torch

from s2vbench.bench.hardware import NVMLSampler, nvml_handle
from s2vbench.bench.sweep import failure_record, gpu_power_metric
from s2vbench.parallel.launch import RankFailed, run_ranks

UUIDS = ["GPU-0aaaaaaa-0000-0000-0000-000000000000", "GPU-1bbbbbbb-0000-0000-0000-000000000000",
         "GPU-2ccccccc-0000-0000-0000-000000000000", "GPU-3ddddddd-0000-0000-0000-000000000000"]


def fake_pynvml(uuids=UUIDS, as_bytes=False):
    """A node of len(uuids) GPUs; device i draws (100 + i) W, is (10 + i) % busy and uses (i + 1) GiB."""
    nv = types.ModuleType("pynvml")
    nv.inits = 0
    nv.shutdowns = 0

    def init():
        nv.inits += 1

    def shutdown():
        nv.shutdowns += 1

    nv.nvmlInit, nv.nvmlShutdown = init, shutdown
    nv.nvmlDeviceGetCount = lambda: len(uuids)
    nv.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)
    nv.nvmlDeviceGetUUID = lambda h: uuids[h[1]].encode() if as_bytes else uuids[h[1]]
    nv.nvmlDeviceGetPowerUsage = lambda h: (100 + h[1]) * 1000  # mW
    nv.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=10 + h[1])
    nv.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(used=(h[1] + 1) * 2**30)
    return nv


@pytest.fixture
def visible(monkeypatch):
    """CUDA_VISIBLE_DEVICES=2,3: torch's devices 0 and 1 are the node's GPUs 2 and 3."""
    seen = {0: UUIDS[2].removeprefix("GPU-"), 1: UUIDS[3].removeprefix("GPU-")}  # torch prints no prefix
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=seen[i]))


@pytest.mark.parametrize("as_bytes", [False, True])  # older nvidia-ml-py returns bytes
def test_nvml_finds_torch_s_device_by_uuid_not_by_index(visible, as_bytes):
    nv = fake_pynvml(as_bytes=as_bytes)
    assert nvml_handle(nv, 0) == ("handle", 2) and nvml_handle(nv, 1) == ("handle", 3)


def test_a_device_nvml_does_not_list_is_a_clear_error_and_nvml_is_shut_down(visible, monkeypatch):
    nv = fake_pynvml(uuids=UUIDS[:2])
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    with pytest.raises(LookupError, match="UUID of CUDA device 0"):
        NVMLSampler(0)
    assert nv.inits == nv.shutdowns == 1


def test_the_sampler_samples_its_own_gpu_and_stops_promptly(visible, monkeypatch):
    nv = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", nv)
    sampler = NVMLSampler(1, period_s=0.01)
    with sampler:
        time.sleep(0.1)
    t0 = time.monotonic()
    with NVMLSampler(1, period_s=30.0):  # a long period must not delay the exit
        pass
    assert time.monotonic() - t0 < 1.0
    s = sampler.summary()
    assert s["n"] >= 2 and s["power_w_mean"] == s["power_w_max"] == 103.0  # the node's GPU 3, not GPU 1
    assert s["sm_util_mean"] == 13.0 and s["memory_used_gib_max"] == 4.0
    assert nv.inits == nv.shutdowns == 2
    m = gpu_power_metric([s, {**s, "power_w_mean": 150.0, "power_w_max": 160.0}])
    assert m.value == 150.0 and m.unit == "W" and m.stats["max"] == 160.0


def test_gpu_power_says_why_it_was_not_measured(monkeypatch):
    from s2vbench.bench import worker

    assert "absent on CPU" in worker._nvml_sampler(torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "pynvml", None)  # nvidia-ml-py missing on a GPU machine
    why = worker._nvml_sampler(torch.device("cuda", 0))
    assert why.startswith("NVML sampling failed on this GPU") and "pynvml" in why
    m = gpu_power_metric([why, why])
    assert m.value is None and m.status == "not_measured" and m.how == why
    assert "absent on CPU" in gpu_power_metric([None]).how  # results written before the reason was kept


def _one_rank_runs_out(rank: int, world: int, propagate: bool):
    from s2vbench.bench.worker import PointOOM, stop_together_on_oom

    def step():
        if rank == 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return SimpleNamespace(loss=2.0)

    first = stop_together_on_oom(lambda: SimpleNamespace(loss=1.0), torch.device("cpu"))  # a step that fits
    try:
        stop_together_on_oom(step, torch.device("cpu"))
    except PointOOM as e:
        if propagate:
            raise
        return first, str(e)
    return first, None


def test_one_rank_out_of_memory_stops_every_rank_at_the_same_step():
    got = run_ranks(_one_rank_runs_out, 2, False, timeout_s=60)
    assert got == [(1.0, "out of memory on at least one rank")] * 2  # rank 0's step succeeded, and it stops too
    with pytest.raises(RankFailed) as e:
        run_ranks(_one_rank_runs_out, 2, True, timeout_s=60)
    assert "PointOOM" in str(e.value)
    from s2vbench.bench.points import Point

    assert failure_record(Point("tiny", 2, "ring"), e.value).tags == ["oom"]


def test_the_cpu_allocator_s_refusal_is_an_oom():
    from s2vbench.bench.points import Point

    with pytest.raises(RuntimeError) as e:
        torch.empty(2**50, dtype=torch.uint8)  # 1 PiB: refused at once, whatever the overcommit setting
    assert failure_record(Point("tiny", 1, "single"), RankFailed(0, str(e.value))).tags == ["oom"]


def test_each_rank_takes_its_local_gpu_and_an_oversubscribed_node_is_refused():
    from s2vbench.bench.worker import cuda_index

    assert [cuda_index(r, 8) for r in range(8)] == list(range(8))
    assert cuda_index(5, 1) == 0  # srun --gpus-per-task=1: each task sees only its own GPU
    with pytest.raises(RuntimeError, match="local rank 4 has no GPU of its own: 4 are visible.*--nproc-per-node"):
        cuda_index(4, 4)


def test_a_point_with_more_ranks_than_gpus_is_recorded_not_launched(tmp_path, monkeypatch):
    from s2vbench.bench import results, sweep
    from s2vbench.bench.points import Point
    from s2vbench.bench.results import read_results

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(results, "capture_environment", lambda: {"device": "NVIDIA H200 (faked)"})
    launched = []
    monkeypatch.setattr(sweep, "run_ranks", lambda *a, **k: launched.append(a) or [])
    sweep.run_sweep([Point("tiny", 2, "fsdp")], tmp_path / "results.json", progress=False)
    (rec,) = read_results(tmp_path / "results.json")
    assert launched == [] and rec.tags == ["failed"]
    assert "2 ranks need 2 GPUs (one a rank), and this machine has 1" in rec.metric("step_time").how


def test_a_gpu_nvml_may_not_open_is_passed_over(visible):
    nv = fake_pynvml()
    opened = nv.nvmlDeviceGetHandleByIndex

    def restricted(i):  # a cgroup-restricted job: the node's GPUs 0 and 1 are another job's
        if i < 2:
            raise RuntimeError("NVML_ERROR_NO_PERMISSION (simulated)")
        return opened(i)

    nv.nvmlDeviceGetHandleByIndex = restricted
    assert nvml_handle(nv, 0) == ("handle", 2)
