"""Time per collective kind: FSDP2's all-gathers and reduce-scatters from a profiled step on 2 gloo ranks, and the
matching of gloo's worker-thread ranges to their launches."""

from types import SimpleNamespace

from s2vbench.bench.points import Point
from s2vbench.bench.sweep import point_record
from s2vbench.bench.worker import run_point_rank
from s2vbench.parallel.comm import collective_seconds
from s2vbench.parallel.launch import run_ranks


def _event(name, start, end, parent=None, device_us=0.0):
    return SimpleNamespace(name=name, cpu_parent=parent, device_time_total=device_us,
                           time_range=SimpleNamespace(start=start, elapsed_us=lambda: end - start))


def test_ranges_are_matched_to_their_launches_first_in_first_out():
    ag1 = _event("c10d::_allgather_base_", 0, 5)
    mode = _event("PythonDispatchMode", 1, 4, parent=ag1)
    events = [
        ag1, mode, _event("c10d::_allgather_base_", 2, 3, parent=mode),  # re-dispatched by a mode: one launch
        _event("gloo:barrier", 1, 2),
        _event("gloo:all_reduce", 0.5, 1.5),  # started before any launch of ours: unclaimed
        _event("gloo:all_gather", 6, 16),
        _event("c10d::_reduce_scatter_base_", 10, 11),
        _event("c10d::_allgather_base_", 12, 13),
        _event("gloo:all_reduce", 11, 41),  # gloo's reduce-scatter of one flat tensor is an all-reduce
        _event("gloo:all_gather", 20, 22),
        own := _event("s2vbench::all_reduce", 49, 54),
        _event("c10d::allreduce_", 50, 51, parent=own),  # ours, the loss all-reduce
        _event("gloo:all_reduce", 52, 53),
        _event("c10d::allreduce_", 55, 56),  # FSDP2's, under HSDP: outside our range
        _event("gloo:all_reduce", 57, 61),
        _event("c10d::alltoall_base_", 60, 61, device_us=7e6),  # NCCL: the kernel time attached to the launch
    ]
    got = collective_seconds(events)
    assert got["fsdp_all_gather"] == {"seconds": (10 + 2) / 1e6, "calls": 2, "launched": 2}
    assert got["fsdp_reduce_scatter"] == {"seconds": 30 / 1e6, "calls": 1, "launched": 1}
    assert got["all_reduce"] == {"seconds": 1 / 1e6, "calls": 1, "launched": 1}
    assert got["hsdp_all_reduce"] == {"seconds": 4 / 1e6, "calls": 1, "launched": 1}
    assert got["all_to_all"] == {"seconds": 7.0, "calls": 1, "launched": 1}
    assert collective_seconds([_event("c10d::_allgather_base_", 0, 1)])["fsdp_all_gather"]["calls"] == 0


def test_fsdp_collective_times_on_two_gloo_ranks():
    from s2vbench.bench.analytic import fsdp_comm_volume
    from s2vbench.model import get_preset

    point = Point("tiny", 2, "fsdp", steps=1, warmup=0, oversubscribed=True)  # the counted step only
    results = run_ranks(run_point_rank, 2, point.to_dict(), timeout_s=180)
    want = fsdp_comm_volume(get_preset("tiny").model, 2, 4, 4, with_motion=True)
    for res in results:
        counted, profiled = res["real"]["comm"], res["real"]["comm_profiled"]
        for kind in ("fsdp_all_gather", "fsdp_reduce_scatter", "all_reduce"):
            # every launch the dispatch-mode counters saw was timed, and their number is the closed form's
            assert profiled[kind]["calls"] == profiled[kind]["launched"] == counted[kind]["calls"], kind
            assert profiled[kind]["seconds"] > 0, kind
        for kind in ("fsdp_all_gather", "fsdp_reduce_scatter"):
            assert counted[kind]["calls"] == want[kind].calls, kind
        assert not {"all_to_all", "ring_p2p", "ring_p2p_bwd"} & (set(profiled) | set(counted))
    rec = point_record(point, results)
    for kind in ("fsdp_all_gather", "fsdp_reduce_scatter", "all_reduce"):
        m = rec.metric(f"collective_time_{kind}")
        assert m.unit == "s" and m.value > 0 and "torch.profiler" in m.how, kind
        assert m.value == max(r["real"]["comm_profiled"][kind]["seconds"] for r in results)
        assert rec.metric(f"comm_{kind}").stats["seconds"] == m.value
    names = {m.name for m in rec.metrics}
    assert not {"collective_time_all_to_all", "collective_time_ring_p2p", "collective_time_ring_p2p_bwd"} & names
