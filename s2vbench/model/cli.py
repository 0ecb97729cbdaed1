"""``python -m s2vbench.model --preset NAME`` (also ``s2vbench model``): parameter counts per group and, for
presets that fit on a CPU, one forward on the preset's clip."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tabulate import tabulate

from .config import PRESETS, Preset, get_preset
from .flow import synthetic_batch
from .model import WanS2V
from .sequence import clip_layout

CPU_FORWARD_PRESETS = ("tiny", "small")


def parameter_groups(model: torch.nn.Module) -> list[tuple[str, int]]:
    """Parameters of each top-level submodule, in registration order."""
    return [(name, sum(p.numel() for p in child.parameters())) for name, child in model.named_children()]


def build(preset: Preset, device: str | torch.device = "cpu", seed: int = 0) -> WanS2V:
    torch.manual_seed(seed)
    with torch.device(device):
        return WanS2V(preset.model)


def smoke_forward(model: WanS2V, preset: Preset, seed: int = 0) -> tuple[torch.Tensor, float]:
    """One no-grad float32 forward on random inputs of the preset's clip; (output, wall seconds)."""
    batch = synthetic_batch(preset.model, preset.clip, batch_size=1, seed=seed)
    t = torch.tensor([500.0])
    start = time.perf_counter()
    with torch.no_grad():
        out = model(batch.latents, t, batch.context, batch.ref_latents, batch.audio_input, batch.motion_latents,
                    batch.cond_states)
    return out, time.perf_counter() - start


def describe(name: str, forward: bool = True, seed: int = 0) -> str:
    preset = get_preset(name)
    on_cpu = forward and name in CPU_FORWARD_PRESETS
    model = build(preset, "cpu" if on_cpu else "meta", seed)
    groups = parameter_groups(model)
    total = sum(n for _, n in groups)
    rows = [(g, f"{n:,}", f"{100 * n / total:.2f}%") for g, n in groups]
    rows.append(("total", f"{total:,}", "100%"))
    lines = [f"preset {name}: {preset.description}", tabulate(rows, headers=["group", "parameters", "share"],
                                                                 colalign=("left", "right", "right"))]
    clip = preset.clip
    layout = clip_layout(preset.model, clip)
    lines.append(f"clip: {clip.infer_frames} frames of {8 * clip.latent_width}x{8 * clip.latent_height} px (width x "
                 f"height) -> latent {clip.latent_frames}x{clip.latent_height}x{clip.latent_width} (frames x height x "
                 f"width); tokens noisy {layout.noisy:,} + "
                 f"ref {layout.ref:,} + motion {layout.motion:,} = {layout.total:,}")
    if on_cpu:
        out, seconds = smoke_forward(model, preset, seed)
        finite = bool(torch.isfinite(out).all())
        lines.append(f"forward (CPU, float32, no grad, one call incl. first-call overhead): output "
                     f"{tuple(out.shape)}, {seconds:.3f} s, finite={finite}")
    elif forward:
        lines.append(f"forward skipped: the {name} preset is built on the meta device (too large for a CPU run)")
    return "\n".join(lines)


SEED_MAX = 2**63 - 1
"""The largest seed every generator takes (torch's manual_seed takes int64 and uint64, numpy's non-negative)."""


def seed_arg(text: str) -> int:
    """An argparse type for ``--seed``: a whole number from 0 to ``SEED_MAX`` (beyond it torch failed with
    "Overflow when unpacking long long", and numpy below 0 with "expected non-negative integer")."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"takes a whole number from 0 to 2**63 - 1, got {text!r}")
    return value


def path_arg(text: str) -> Path:
    """An argparse type for a file or folder: an empty or blank one is refused (``Path("")`` is the current
    folder, where an output would land unasked)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"takes a path, got {text!r}")
    return Path(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", required=True, choices=sorted(PRESETS), help="model preset")
    parser.add_argument("--no-forward", action="store_true", help="only count parameters")
    parser.add_argument("--seed", type=seed_arg, default=0, help="seed of weights and inputs")


def run(args: argparse.Namespace) -> int:
    print(describe(args.preset, forward=not args.no_forward, seed=args.seed))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m s2vbench.model", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


__all__ = ["SEED_MAX", "build", "describe", "main", "parameter_groups", "path_arg", "seed_arg", "smoke_forward"]
