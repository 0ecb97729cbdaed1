"""Loading official-format safetensors checkpoints (the released Wan-S2V-14B uses these key names).

Accepted sources: one ``.safetensors`` file; a folder with a ``*.safetensors.index.json`` weight map (the
released, sharded layout); or a folder of ``.safetensors`` shards. Keys and shapes are checked before any
tensor is copied, and a mismatch names the keys and what to do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn


class CheckpointError(RuntimeError):
    """A checkpoint that does not match the model, or cannot be found."""


def _safe_open():
    """safetensors' reader, imported only where a checkpoint is read: building or timing the model needs none."""
    try:
        from safetensors import safe_open
    except ImportError as e:
        raise CheckpointError(f"reading a checkpoint needs safetensors ({e}): pip install safetensors") from e
    return safe_open


def checkpoint_files(path: str | Path) -> dict[str, Path]:
    """Map every tensor key of the checkpoint at ``path`` to the file that holds it."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise CheckpointError(f"{path} is not a .safetensors file; convert .pth checkpoints with "
                                  f"safetensors.torch.save_file first")
        files = [path]
    elif path.is_dir():
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if len(indexes) > 1:
            raise CheckpointError(f"{path} holds several weight maps {[p.name for p in indexes]}; pass one file")
        if indexes:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
            missing = sorted({f for f in weight_map.values() if not (path / f).is_file()})
            if missing:
                raise CheckpointError(f"{indexes[0].name} lists shards that are not in {path}: {missing}")
            return {k: path / f for k, f in weight_map.items()}
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"no .safetensors files in {path}")
    else:
        raise CheckpointError(f"checkpoint {path} does not exist")
    where: dict[str, Path] = {}
    for f in files:
        with _safe_open()(str(f), framework="pt") as sf:
            for key in sf.keys():
                if key in where:
                    raise CheckpointError(f"key {key!r} is in both {where[key].name} and {f.name}")
                where[key] = f
    return where


def load_state_dict(path: str | Path, keys: list[str] | None = None, dtype: torch.dtype | None = None,
                    device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read (a subset of) an official-format checkpoint, optionally cast to ``dtype``."""
    where = checkpoint_files(path)
    wanted = list(where) if keys is None else keys
    absent = [k for k in wanted if k not in where]
    if absent:
        raise CheckpointError(f"checkpoint {path} lacks {len(absent)} requested keys, e.g. {absent[:5]}")
    by_file: dict[Path, list[str]] = {}
    for k in wanted:
        by_file.setdefault(where[k], []).append(k)
    out: dict[str, torch.Tensor] = {}
    for f, ks in by_file.items():
        with _safe_open()(str(f), framework="pt", device=str(device)) as sf:
            for k in ks:
                t = sf.get_tensor(k)
                out[k] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
    return out


@dataclass
class LoadReport:
    """What a checkpoint load did."""

    source: str
    """Path that was loaded."""
    num_tensors: int
    """Tensors copied into the model."""
    num_params: int
    """Elements copied."""


def _shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for k, f in checkpoint_files(path).items():
        with _safe_open()(str(f), framework="pt") as sf:
            shapes[k] = tuple(sf.get_slice(k).get_shape())
    return shapes


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True,
                    dtype: torch.dtype | None = None) -> LoadReport:
    """Load an official-format checkpoint into ``model`` after checking every key and shape.

    A model on the meta device is materialised by the load (its parameters are replaced). ``dtype`` casts
    floating tensors (default: each parameter's current dtype)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = _shapes(path)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    problems = []
    if strict and missing:
        problems.append(f"{len(missing)} model keys missing from the checkpoint, e.g. {missing[:5]}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} checkpoint keys the model does not have, e.g. {unexpected[:5]}")
    if wrong:
        problems.append("shape mismatches " + ", ".join(f"{k}: model {expected[k]} vs checkpoint {found[k]}"
                                                         for k in wrong[:5]))
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit this model: " + "; ".join(problems) +
                              ". Check that the preset matches the checkpoint (e.g. --preset 14b for Wan-S2V-14B).")
    keys = [k for k in expected if k in found]
    current = model.state_dict()
    meta = any(v.is_meta for v in current.values())
    device = "cpu" if meta else next(iter(current.values())).device
    sd = load_state_dict(path, keys, device=device)
    for k in keys:
        target = dtype if dtype is not None else current[k].dtype
        if sd[k].is_floating_point():
            sd[k] = sd[k].to(target)
    model.load_state_dict(sd, strict=strict, assign=meta or dtype is not None)
    return LoadReport(str(path), len(keys), sum(v.numel() for v in sd.values()))


__all__ = ["CheckpointError", "LoadReport", "checkpoint_files", "load_checkpoint", "load_state_dict"]
