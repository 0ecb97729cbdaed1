"""Loading official-format safetensors checkpoints (the released Wan-S2V-14B uses these key names).

Accepted sources: one ``.safetensors`` file; a folder with a ``*.safetensors.index.json`` weight map (the
released, sharded layout); or a folder of ``.safetensors`` shards. Every file's header, keys and shapes are
checked before any tensor is copied: a mismatch names the keys and what to do, and a file safetensors cannot
read (truncated, empty, not safetensors) is a :class:`CheckpointError` naming it and the fix, as is any other
safetensors file s2vbench.model reads (:func:`open_safetensors`) or file it reads with ``torch.load``
(:func:`load_torch_file`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .device import check_device


class CheckpointError(RuntimeError):
    """A checkpoint that does not match the model, cannot be found, or cannot be read."""


def _safetensors():
    """safetensors' reader and its error, imported only where a file is read: building or timing the model needs
    neither."""
    try:
        from safetensors import SafetensorError, safe_open
    except ImportError as e:
        raise CheckpointError(f"reading a checkpoint needs safetensors ({e}): pip install safetensors") from e
    return safe_open, SafetensorError


def open_safetensors(path: str | Path, what: str = "checkpoint file",
                     error: type[Exception] = CheckpointError):
    """``safe_open(path)`` on the CPU, its header parsed and checked against the file's size.

    safetensors finds every malformed file here (truncated, empty, not safetensors, a header whose offsets
    do not fit the file), so here is where one becomes ``error`` naming the file, the reason and the fix
    instead of safetensors' bare ``SafetensorError``."""
    safe_open, SafetensorError = _safetensors()
    path = Path(path)
    try:
        return safe_open(str(path), framework="pt")
    except SafetensorError as e:
        size = path.stat().st_size
        raise error(f"{what} {path} ({size:,} bytes) is not a readable safetensors file ({e}): it is truncated or "
                    f"corrupt, e.g. an interrupted download or copy; download or copy it again and check its size "
                    f"against the source's") from e
    except OSError as e:
        raise error(f"{what} {path} cannot be opened ({e}); check that it is a readable file") from e


def read_tensors(path: str | Path, what: str = "checkpoint file",
                 error: type[Exception] = CheckpointError) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file on the CPU (``safetensors.torch.load_file``, with its errors as
    :func:`open_safetensors` raises them)."""
    with open_safetensors(path, what, error) as sf:
        return {k: sf.get_tensor(k) for k in sf.keys()}


def load_torch_file(path: str | Path, what: str, fix: str, error: type[Exception] = CheckpointError) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors, and containers of them, never pickled code.

    A file it cannot read (truncated, corrupt, holding other objects) becomes ``error`` naming it, its size, the
    reason in one line and ``fix``: torch's own message names no file and runs to several lines of advice about
    ``weights_only``."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:
        raise error(f"{what} {path} cannot be opened ({e}); check that it is a readable file") from None
    except Exception as e:  # noqa: BLE001 - truncated zip, bad pickle, EOF, a disallowed global: one answer
        text = str(e)
        # the weights-only unpickler buries its reason after paragraphs of advice; elsewhere it is the first line
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", text)
        reason = found.group(1) if found else text.strip().split("\n")[0].split(". ")[0]
        raise error(f"{what} {path} ({path.stat().st_size:,} bytes) cannot be read with torch.load(weights_only=True) "
                    f"({type(e).__name__}{': ' + reason if reason else ''}): it is truncated or corrupt, or holds "
                    f"more than tensors; {fix}") from None


def _weight_map(index: Path) -> dict[str, str]:
    fix = ("download it again, or delete it to load every .safetensors file in the folder (the released "
           "checkpoint's maps each tensor key to its shard's file name under \"weight_map\")")
    try:
        doc = json.loads(index.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"weight map {index} cannot be read ({e}); {fix}") from e
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise CheckpointError(f"weight map {index} has no \"weight_map\" object of tensor key -> shard file name; "
                              f"{fix}")
    return weight_map


def _catalog(path: str | Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """Every tensor key of the checkpoint at ``path`` -> (the file that holds it, its shape); each file's header
    is read once, so an unreadable file is found here, before any tensor is copied."""
    path = Path(path)
    listed: dict[Path, list[str]] | None = None
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
            index = indexes[0].name
            weight_map = _weight_map(indexes[0])
            missing = sorted({f for f in weight_map.values() if not (path / f).is_file()})
            if missing:
                raise CheckpointError(f"{index} lists shards that are not in {path}: {missing}")
            listed = {}
            for k, f in weight_map.items():
                listed.setdefault(path / f, []).append(k)
            files = sorted(listed)
        else:
            files = sorted(path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"no .safetensors files in {path}")
    else:
        raise CheckpointError(f"checkpoint {path} does not exist")
    where: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for f in files:
        with open_safetensors(f) as sf:
            held = list(sf.keys())
            keys = held if listed is None else listed[f]
            if listed is not None:
                absent = sorted(set(keys) - set(held))
                if absent:
                    raise CheckpointError(f"{index} maps {len(absent)} keys to {f.name}, which does not "
                                          f"hold them, e.g. {absent[:5]}: the weight map and the shards come from "
                                          f"different downloads; download the checkpoint folder again")
            for key in keys:
                if key in where:
                    raise CheckpointError(f"key {key!r} is in both {where[key][0].name} and {f.name}")
                where[key] = (f, tuple(sf.get_slice(key).get_shape()))
    return where


def checkpoint_files(path: str | Path) -> dict[str, Path]:
    """Map every tensor key of the checkpoint at ``path`` to the file that holds it."""
    return {k: f for k, (f, _) in _catalog(path).items()}


def load_state_dict(path: str | Path, keys: list[str] | None = None, dtype: torch.dtype | None = None,
                    device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read (a subset of) an official-format checkpoint onto ``device`` (checked first: :func:`check_device`),
    optionally cast to ``dtype``."""
    device = check_device(device)
    where = checkpoint_files(path)
    wanted = list(where) if keys is None else keys
    absent = [k for k in wanted if k not in where]
    if absent:
        raise CheckpointError(f"checkpoint {path} lacks {len(absent)} requested keys, e.g. {absent[:5]}")
    by_file: dict[Path, list[str]] = {}
    for k in wanted:
        by_file.setdefault(where[k], []).append(k)
    out: dict[str, torch.Tensor] = {}
    safe_open, _ = _safetensors()
    for f, ks in by_file.items():
        with safe_open(str(f), framework="pt", device=str(device)) as sf:
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


def load_checkpoint(model: nn.Module, path: str | Path, strict: bool = True,
                    dtype: torch.dtype | None = None) -> LoadReport:
    """Load an official-format checkpoint into ``model`` after checking every key and shape.

    A model on the meta device is materialised by the load (its parameters are replaced). ``dtype`` casts
    floating tensors (default: each parameter's current dtype)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: shape for k, (_, shape) in _catalog(path).items()}
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


__all__ = ["CheckpointError", "LoadReport", "checkpoint_files", "load_checkpoint", "load_state_dict",
           "load_torch_file", "open_safetensors", "read_tensors"]
