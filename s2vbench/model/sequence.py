"""The token sequence ``[noisy | ref | motion]``: its layout, validation and RoPE positions.

Everything here is a pure function of shapes, so the model, the parallel code (to shard and pad), the
analytic cost model and the resolution bucketer all count tokens the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .config import ClipShape, WanS2VConfig

# FramePack projector kernels (= strides) on the latent, newest bucket first: 1x, 2x and 4x compression.
FRAMEPACK_KERNELS: tuple[tuple[int, int, int], ...] = ((1, 2, 2), (2, 4, 4), (4, 8, 8))
FRAMEPACK_COMPRESSION: tuple[int, ...] = (1, 2, 4)

NOISY, REF, MOTION = 0, 1, 2
"""Token-type indices of ``trainable_cond_mask``."""


class InputError(ValueError):
    """Model inputs whose shapes the architecture cannot take, with what to pass instead."""


@dataclass(frozen=True)
class SequenceLayout:
    """Token counts of one clip's ``[noisy | ref | motion]`` sequence."""

    grid: tuple[int, int, int]
    """(F, H, W): the noisy latent's token grid after patching."""
    motion_grids: tuple[tuple[int, int, int], ...]
    """Token grids of the FramePack buckets (newest first); empty for a clip without motion."""

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[1] * self.grid[2]

    @property
    def noisy(self) -> int:
        return math.prod(self.grid)

    @property
    def ref(self) -> int:
        return self.tokens_per_frame

    @property
    def motion(self) -> int:
        return sum(math.prod(g) for g in self.motion_grids)

    @property
    def total(self) -> int:
        return self.noisy + self.ref + self.motion

    def token_types(self) -> torch.Tensor:
        """[S] int64: 0 noisy, 1 ref, 2 motion."""
        return torch.cat([torch.full((n,), kind, dtype=torch.long)
                          for n, kind in ((self.noisy, NOISY), (self.ref, REF), (self.motion, MOTION))])


def sequence_layout(cfg: WanS2VConfig, latent_frames: int, latent_height: int, latent_width: int,
                    with_motion: bool) -> SequenceLayout:
    """Validate a latent shape against the architecture and return its token layout."""
    pt, ph, pw = cfg.patch_size
    for what, n, p in (("frame count", latent_frames, pt), ("height", latent_height, ph),
                       ("width", latent_width, pw)):
        if n <= 0 or n % p:
            raise InputError(
                f"latent {what} {n} is not a positive multiple of the patch size {p} on that axis; "
                f"a video of H x W pixels has an H/8 x W/8 latent, so pick pixel sizes that are multiples "
                f"of {8 * max(ph, pw)} (the official pipeline uses multiples of 64)")
    grid = (latent_frames // pt, latent_height // ph, latent_width // pw)
    motion_grids: tuple[tuple[int, int, int], ...] = ()
    if with_motion:
        need = max(k[1] for k in FRAMEPACK_KERNELS)
        if latent_height % need or latent_width % need:
            raise InputError(
                f"FramePack's 4x projector needs the latent height and width to be multiples of {need}, got "
                f"{latent_height} x {latent_width}; use pixel sizes that are multiples of 64, as the "
                f"official pipeline does, or drop the motion tokens (first clip)")
        motion_grids = tuple((n // k[0], latent_height // k[1], latent_width // k[2])
                             for n, k in zip(cfg.framepack_buckets, FRAMEPACK_KERNELS))
    return SequenceLayout(grid, motion_grids)



def clip_layout(cfg: WanS2VConfig, clip: ClipShape) -> SequenceLayout:
    """The token layout of a clip's latent geometry (validated as :func:`sequence_layout` validates it)."""
    return sequence_layout(cfg, clip.latent_frames, clip.latent_height, clip.latent_width, clip.with_motion)

def _grid_positions(t: list[int], h: list[int], w: list[int]) -> torch.Tensor:
    tt, hh, ww = torch.meshgrid(torch.tensor(t), torch.tensor(h), torch.tensor(w), indexing="ij")
    return torch.stack([tt.reshape(-1), hh.reshape(-1), ww.reshape(-1)], dim=1)


def _spread(n_out: int, full: int) -> list[int]:
    # Compressed grids keep the full grid's extent: n_out positions from 0 to full-1, truncated to int.
    return np.linspace(0, full - 1, n_out).astype(np.int64).tolist()


def rope_positions(cfg: WanS2VConfig, layout: SequenceLayout) -> torch.Tensor:
    """[S, 3] int64 (t, y, x) RoPE positions of every token, in sequence order.

    Noisy tokens sit at (f, y, x); the reference image at t = ``ref_rope_time``; FramePack tokens at negative
    times counted back from the clip (bucket k ends ``sum(buckets[:k])`` frames before it), with their
    compressed spatial grid spread over the full token grid.
    """
    F, H, W = layout.grid
    parts = [_grid_positions(list(range(F)), list(range(H)), list(range(W))),
             _grid_positions([cfg.ref_rope_time], list(range(H)), list(range(W)))]
    back = 0
    for frames, (gt, gh, gw) in zip(cfg.framepack_buckets, layout.motion_grids):
        back += frames
        t = (-np.linspace(back, back - frames + 1, gt).astype(np.int64)).tolist()
        parts.append(_grid_positions(t, _spread(gh, H), _spread(gw, W)))
    return torch.cat(parts, dim=0)


def audio_conv_lengths(frames: int) -> tuple[int, int]:
    """Outputs of the audio encoder's two stride-2 causal convs for ``frames`` inputs: ceil(T/2), then half that."""
    half = -(-frames // 2)
    return half, -(-half // 2)


def audio_latent_frames(infer_frames: int, motion_frames: int) -> int:
    """Latent frames the audio encoder yields for ``infer_frames`` video frames (after the motion prefix)."""
    return audio_conv_lengths(infer_frames + motion_frames)[1] - (motion_frames + 3) // 4


__all__ = ["FRAMEPACK_COMPRESSION", "FRAMEPACK_KERNELS", "InputError", "MOTION", "NOISY", "REF", "SequenceLayout",
           "audio_conv_lengths", "audio_latent_frames", "clip_layout", "rope_positions", "sequence_layout"]
