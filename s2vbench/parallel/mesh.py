"""Parallel configuration and the device mesh ``dp_replicate x dp_shard x ring x ulysses`` (Ulysses innermost).

Ulysses is the inner dimension so its all-to-alls stay on consecutive ranks (inside a node); ring is next.
FSDP shards over the flattened ``dp_shard x ring x ulysses`` ranks (torchtitan's ``dp_shard_cp``). With
``dp_replicate`` > 1 that sharding is replicated (HSDP): each replica group is ``dp_shard x ring x ulysses``
consecutive ranks (a node, when it has that many GPUs), and gradients are all-reduced across the groups, so
the per-layer all-gathers and reduce-scatters stay inside a group and only one gradient all-reduce per
backward crosses between them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from ..model.device import accelerator_here, check_device
from .sequence_parallel import CPGroups
from .ulysses import valid_ulysses_degrees


class ParallelConfigError(ValueError):
    """A parallel configuration that cannot work, found before any communication."""


@dataclass(frozen=True)
class MeshDegrees:
    """The mesh's four degrees and their products, shared by the job's :class:`ParallelConfig` and the
    performance model's ``Strategy``."""

    dp_shard: int = 1
    """Data-parallel degree inside a replica group; FSDP shards parameters over its dp_shard x ring x ulysses
    ranks."""
    ulysses: int = 1
    """Ulysses (all-to-all, head-split) context-parallel degree: the inner group, consecutive ranks (a node)."""
    ring: int = 1
    """Ring-attention context-parallel degree: the outer group."""
    dp_replicate: int = field(default=1, kw_only=True)
    """HSDP replica groups (outermost): the sharding above is replicated this many times and gradients are
    all-reduced across the groups."""

    @property
    def cp(self) -> int:
        """Context-parallel degree: ranks that split one clip's sequence."""
        return self.ulysses * self.ring

    @property
    def dp(self) -> int:
        """Data-parallel degree: ranks that see different samples."""
        return self.dp_replicate * self.dp_shard

    @property
    def shard_group_size(self) -> int:
        """Ranks one parameter is sharded over (one replica group)."""
        return self.dp_shard * self.cp

    @property
    def world_size(self) -> int:
        return self.dp_replicate * self.shard_group_size


@dataclass(frozen=True)
class ParallelConfig(MeshDegrees):
    """How one training job is split across ranks: the degrees, then what the job's attention needs."""

    ac: bool = False
    """Activation checkpointing of every block."""
    attention_backend: str = "torch"
    """Local attention inside Ulysses/ring: "torch", "triton" or "flash_attn" (the gpu extra)."""

    def validate(self, world_size: int, num_heads: int, seq_len: int | None = None) -> None:
        """Raise :class:`ParallelConfigError` naming the problem and a fix; touches no process group."""
        for name in ("dp_replicate", "dp_shard", "ulysses", "ring"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ParallelConfigError(f"ParallelConfig.{name}={value!r} must be a positive integer")
        if self.world_size != world_size:
            raise ParallelConfigError(
                f"dp_replicate x dp_shard x ring x ulysses = {self.dp_replicate} x {self.dp_shard} x {self.ring} x "
                f"{self.ulysses} = {self.world_size} ranks, but the job has world size {world_size}; choose degrees "
                f"whose product is {world_size}")
        if num_heads % self.ulysses:
            raise ParallelConfigError(
                f"the Ulysses degree {self.ulysses} must divide the {num_heads} attention heads; valid degrees: "
                f"{', '.join(map(str, valid_ulysses_degrees(num_heads)))}")
        from .local_attention import BACKENDS

        if self.attention_backend not in BACKENDS:
            raise ParallelConfigError(f"ParallelConfig.attention_backend={self.attention_backend!r}: choose one of "
                                      f"{', '.join(map(repr, BACKENDS))}")
        if seq_len is not None and self.cp > seq_len:
            raise ParallelConfigError(
                f"{self.cp} context-parallel ranks (ring {self.ring} x ulysses {self.ulysses}) for a sequence of "
                f"{seq_len} tokens: some ranks would hold only padding; use at most {seq_len} ranks")


@dataclass
class ParallelMesh:
    """The mesh and groups of this rank."""

    config: ParallelConfig
    mesh: DeviceMesh
    """``dp_replicate x dp_shard x ring x ulysses``."""
    cp: CPGroups
    fsdp: DeviceMesh
    """FSDP's mesh: 1-D over the ``dp_shard x ring x ulysses`` ranks of a replica group; 2-D with
    ``dp_replicate`` outermost (HSDP) when that is above 1."""

    @property
    def dp_rank(self) -> int:
        """This rank's data-parallel index (replica group major), which picks its samples."""
        return self.mesh.get_local_rank("dp_replicate") * self.config.dp_shard + self.mesh.get_local_rank("dp_shard")

    def cp_group(self) -> dist.ProcessGroup:
        """The whole context-parallel group (ring x ulysses), ranked by chunk index."""
        return self.mesh["ring", "ulysses"]._flatten("cp").get_group()


_DIMS = ("dp_replicate", "dp_shard", "ring", "ulysses")


def _meshes(config: ParallelConfig, device_type: str) -> tuple[DeviceMesh, DeviceMesh]:
    """(the 4-D mesh, FSDP's mesh). FSDP's is the root and the 4-D one unflattens it: torch deprecates the
    other way round, slicing a flattened dimension out of the root (releases without ``_unflatten`` still
    take it)."""
    shard = config.shard_group_size
    inner = (config.dp_shard, config.ring, config.ulysses)
    if not hasattr(DeviceMesh, "_unflatten"):
        mesh = init_device_mesh(device_type, (config.dp_replicate, *inner), mesh_dim_names=_DIMS)
        flat = mesh["dp_shard", "ring", "ulysses"]._flatten("dp_shard_cp")
        return mesh, mesh["dp_replicate", "dp_shard_cp"] if config.dp_replicate > 1 else flat
    if config.dp_replicate > 1:
        root = init_device_mesh(device_type, (config.dp_replicate, shard),
                                mesh_dim_names=("dp_replicate", "dp_shard_cp"))
        return root._unflatten("dp_shard_cp", inner, _DIMS[1:]), root
    root = init_device_mesh(device_type, (shard,), mesh_dim_names=("dp_shard_cp",))
    return root._unflatten("dp_shard_cp", (1, *inner), _DIMS), root


def mesh_device_type(device: str | torch.device) -> str:
    """The device type a mesh is built on for ``device``: "cpu", or an accelerator this process has ("cuda",
    or "cuda:i" naming its current GPU). Raises :class:`ParallelConfigError` naming the device, the devices
    this process has and the fix (:func:`s2vbench.model.device.check_device`).

    torch finds a missing device only deep inside the mesh or FSDP ("Torch not compiled with CUDA enabled", an
    AttributeError on None), after the model was already changed; and the mesh takes a type alone, so a GPU
    index is checked against the current device, the one FSDP places shards on."""
    kind, _ = accelerator_here()
    use = f'Pass "{kind}" (each rank on its current {kind} device) or "cpu"' if kind else 'Pass "cpu" (gloo)'
    return check_device(device, error=ParallelConfigError, fix=use, role="run ranks on",
                        current="the mesh and FSDP").type


def build_mesh(config: ParallelConfig, device_type: str | torch.device = "cpu",
               num_heads: int | None = None) -> ParallelMesh:
    """This rank's mesh on ``device_type`` (see :func:`mesh_device_type`)."""
    device_type = mesh_device_type(device_type)
    world = dist.get_world_size()
    config.validate(world, num_heads if num_heads is not None else config.ulysses)
    mesh, fsdp = _meshes(config, device_type)
    groups = CPGroups(ulysses=mesh.get_group("ulysses") if config.ulysses > 1 else None,
                      ring=mesh.get_group("ring") if config.ring > 1 else None,
                      ulysses_size=config.ulysses, ring_size=config.ring)
    return ParallelMesh(config, mesh, groups, fsdp)


__all__ = ["MeshDegrees", "ParallelConfig", "ParallelConfigError", "ParallelMesh", "build_mesh", "mesh_device_type"]
