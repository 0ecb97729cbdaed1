"""The device mesh: where each rank sits, which groups it joins, and FSDP's mesh, on 4 gloo ranks; the device it
is built on, checked before anything changes."""

import re

import pytest
import torch
import torch.distributed as dist
from test_devices import NO_GPU, two_gpus  # noqa: F401 - two_gpus is a fixture

from s2vbench.model import WanS2V, get_preset
from s2vbench.parallel import ParallelConfig, ParallelConfigError, build_mesh, parallelize
from s2vbench.parallel.launch import run_ranks
from s2vbench.parallel.mesh import mesh_device_type


def _layout(rank: int, world: int, config: ParallelConfig, old_torch: bool) -> dict:
    import warnings

    import torch.distributed as dist

    import s2vbench.parallel.mesh as mesh_module
    from s2vbench.parallel import build_mesh

    if old_torch:  # a release without DeviceMesh._unflatten takes the slicing path
        mesh_module.DeviceMesh = type("DeviceMeshWithoutUnflatten", (), {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = build_mesh(config)
        fsdp = pm.fsdp
        groups = {name: dist.get_process_group_ranks(pm.mesh.get_group(name)) for name in pm.mesh.mesh_dim_names}
    return {"fsdp_shape": tuple(fsdp.mesh.shape), "fsdp_names": fsdp.mesh_dim_names, "fsdp_ranks": fsdp.mesh.tolist(),
            "groups": groups, "cp": dist.get_process_group_ranks(pm.cp_group()), "dp_rank": pm.dp_rank,
            "mesh_warnings": [str(w.message) for w in caught if "mesh" in str(w.message).lower()]}


@pytest.mark.parametrize("old_torch", [False, True], ids=["unflatten", "slicing"])
def test_hsdp_mesh_places_ranks_replica_major_with_ulysses_innermost(old_torch):
    # 2 replica groups of 2 Ulysses ranks: ranks {0, 1} and {2, 3} each hold a full shard set
    out = run_ranks(_layout, 4, ParallelConfig(dp_replicate=2, ulysses=2), old_torch, timeout_s=90)
    for rank, r in enumerate(out):
        assert r["fsdp_shape"] == (2, 2) and r["fsdp_names"] == ("dp_replicate", "dp_shard_cp")
        assert r["fsdp_ranks"] == [[0, 1], [2, 3]]
        assert r["groups"]["ulysses"] == r["cp"] == [rank - rank % 2, rank - rank % 2 + 1]
        assert r["groups"]["dp_replicate"] == [rank % 2, rank % 2 + 2] and r["groups"]["ring"] == [rank]
        assert r["dp_rank"] == rank // 2
        assert r["mesh_warnings"] == [] or old_torch


def test_fsdp_mesh_is_one_dimensional_over_dp_and_context_parallel_ranks():
    out = run_ranks(_layout, 4, ParallelConfig(dp_shard=2, ring=2), False, timeout_s=90)
    for rank, r in enumerate(out):
        assert r["fsdp_shape"] == (4,) and r["fsdp_names"] == ("dp_shard_cp",) and r["fsdp_ranks"] == [0, 1, 2, 3]
        # ring is the inner of the two: consecutive ranks; the data-parallel peers lie 2 apart
        assert r["groups"]["ring"] == r["cp"] == [rank - rank % 2, rank - rank % 2 + 1]
        assert r["groups"]["dp_shard"] == [rank % 2, rank % 2 + 2]
        assert r["dp_rank"] == rank // 2 and r["mesh_warnings"] == []


@pytest.fixture
def one_rank():
    """A one-rank gloo group in this process, so a bad device reaches wherever torch would find it."""
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("device, why", [
    pytest.param("cuda", r"is not available: torch\.cuda\.is_available\(\) is False", marks=NO_GPU),
    pytest.param("cuda:0", r"is not available: torch\.cuda\.is_available\(\) is False", marks=NO_GPU),
    pytest.param(torch.device("cuda", 0), r"is not available", marks=NO_GPU),
    ("banana", "is not a device name torch knows"),
    ("cuda:x", "is not a device name torch knows"),
    ("meta", "is not a device this process can run ranks on"),
])
def test_parallelize_refuses_a_device_this_process_lacks_before_changing_the_model(one_rank, device, why):
    with torch.device("meta"):
        model = WanS2V(get_preset("tiny").model)
    backends = [block.self_attn.attn_backend for block in model.blocks]
    fix = r"devices here: cpu\. Pass \"cpu\"" if not torch.cuda.is_available() else "devices here: cpu, cuda:0"
    with pytest.raises(ParallelConfigError, match=rf"^device {re.escape(repr(device))} {why}.*; {fix}"):
        parallelize(model, ParallelConfig(), device)
    assert [block.self_attn.attn_backend for block in model.blocks] == backends


def test_a_gpu_index_must_be_a_visible_gpu_and_the_current_one(two_gpus, one_rank):
    assert [mesh_device_type(d) for d in ("cuda", "cuda:1", torch.device("cuda", 1), "cpu")] == ["cuda"] * 3 + ["cpu"]
    here = "devices here: cpu, cuda:0, cuda:1"
    for device, why in (("cuda:7", rf"does not exist: this process sees 2 cuda device\(s\); {here}\. Pass \"cuda\""),
                        ("cuda:0", rf"is not this process's current cuda device, cuda:1,.*{here}\. Call "
                                   rf"torch\.cuda\.set_device\(0\) first"),
                        ("xpu", rf"is not available: torch\.xpu\.is_available\(\) is False.*{here}")):
        with pytest.raises(ParallelConfigError, match=rf"^device '{device}' {why}"):
            build_mesh(ParallelConfig(), device)
