"""Sequence parallelism (Ulysses, ring, USP) and FSDP for the Wan-S2V model, on torch.distributed.

Entry point: :func:`parallelize` (context parallelism, activation checkpointing and FSDP2 in one documented
order) and :func:`s2vbench.parallel.train.parallel_train_step`."""

from .mesh import ParallelConfig, ParallelConfigError, ParallelMesh, build_mesh
from .parallelize import parallelize

__all__ = ["ParallelConfig", "ParallelConfigError", "ParallelMesh", "build_mesh", "parallelize"]
