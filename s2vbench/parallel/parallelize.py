"""``parallelize(model, config)``: the one entry point that makes a Wan-S2V model distributed.

Applied in this order (each step assumes the previous):
1. validation of the device and of the config against the model and the world size, before any communication;
2. the device mesh ``dp_replicate x dp_shard x ring x ulysses``;
3. context parallelism: every block's self-attention through Ulysses/ring, the blocks on this rank's window
   of the sequence padded once at its global end (text cross-attention and audio injection stay local);
4. activation checkpointing of every block, keeping the attention op's outputs (no communication re-run);
5. FSDP2 over the flattened dp_shard x ring x ulysses ranks (HSDP, replicated across dp_replicate groups,
   when that is > 1): each block a unit, each audio-injector pair
   (``injector[k]`` with ``injector_adain_layers[k]``) one unit prefetched next to its block, the rest in the
   root; gradients are SUMMED (divide factor 1, sum reduction forced: never a backend's AVG), and the loss
   is normalised by the global token count instead (see :mod:`s2vbench.parallel.train`).
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from ..model import WanS2V
from .checkpointing import enable_activation_checkpointing
from .context import apply_context_parallel
from .mesh import ParallelConfig, ParallelMesh, build_mesh, mesh_device_type


# Linear layers on 3-D inputs return views; FSDP2 warns about in-place ops on them, which this code never does.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")


def fsdp_units(model: WanS2V) -> list[list[nn.Module]]:
    """The FSDP units in execution order of their first use: blocks and audio-injector pairs
    (AdaLN first, then its cross-attention); the root (everything else) is not listed."""
    injector = model.audio_injector
    units: list[list[nn.Module]] = []
    for i, block in enumerate(model.blocks):
        units.append([block])
        k = model.injection_of_block.get(i)
        if k is not None:
            pair = [injector.injector[k]]
            if injector.injector_adain_layers is not None:
                pair.insert(0, injector.injector_adain_layers[k])
            units.append(pair)
    return units


def apply_fsdp(model: WanS2V, mesh, param_dtype: torch.dtype | None = None) -> None:
    """FSDP2 units as described above; with low-precision ``param_dtype`` gradients reduce in float32."""
    low = param_dtype in (torch.bfloat16, torch.float16)
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if low else None)
    units = fsdp_units(model)
    for unit in units:
        fully_shard(unit if len(unit) > 1 else unit[0], mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    register_fsdp_forward_method(model, "forward_tokens")
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    # Prefetch in execution order: block i, then its injection pair (if any), then block i + 1.
    firsts = [unit[0] for unit in units]
    for cur, nxt in zip(firsts, firsts[1:]):
        cur.set_modules_to_forward_prefetch([nxt])


def parallelize(model: WanS2V, config: ParallelConfig, device_type: str | torch.device = "cpu",
                param_dtype: torch.dtype | None = None, seq_len: int | None = None) -> ParallelMesh:
    """Make ``model`` (possibly on the meta device) distributed in place; returns this rank's mesh.

    ``device_type`` is where the ranks run: "cpu", or "cuda" (each rank on its current GPU; "cuda:i" when
    that is GPU i). A device this process lacks raises :class:`ParallelConfigError` before the model changes."""
    device_type = mesh_device_type(device_type)
    config.validate(dist.get_world_size(), model.cfg.num_heads, seq_len)
    pm = build_mesh(config, device_type, model.cfg.num_heads)
    apply_context_parallel(model, pm.cp, config.attention_backend)
    if config.ac:
        enable_activation_checkpointing(model)
    apply_fsdp(model, pm.fsdp, param_dtype)
    return pm


__all__ = ["apply_fsdp", "fsdp_units", "parallelize"]
