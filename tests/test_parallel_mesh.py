"""The device mesh: where each rank sits, which groups it joins, and FSDP's mesh, on 4 gloo ranks."""

import pytest

from s2vbench.parallel import ParallelConfig
from s2vbench.parallel.launch import run_ranks


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
