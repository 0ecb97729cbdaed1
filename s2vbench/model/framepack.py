"""FramePack motion compression: 19 latent frames of history become a fixed, small number of tokens."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .sequence import FRAMEPACK_KERNELS, InputError


class FramePackMotioner(nn.Module):
    """Splits the motion latents oldest-to-newest as [16 | 2 | 1] frames and patchifies them with kernels
    (4,8,8), (2,4,4) and (1,2,2); tokens are emitted newest bucket first: [1x, 2x, 4x]."""

    def __init__(self, in_dim: int, dim: int, buckets: tuple[int, int, int] = (1, 2, 16)):
        super().__init__()
        self.buckets = tuple(buckets)
        self.proj, self.proj_2x, self.proj_4x = (nn.Conv3d(in_dim, dim, kernel_size=k, stride=k)
                                                 for k in FRAMEPACK_KERNELS)

    def forward(self, motion: torch.Tensor) -> torch.Tensor:
        """motion [B, C, Fm <= sum(buckets), h, w] (most recent frame last) -> tokens [B, M, dim].

        Fewer than ``sum(buckets)`` frames are left-padded with zeros, as in the official pipeline."""
        total = sum(self.buckets)
        have = motion.shape[2]
        if have > total:
            raise InputError(f"motion_latents has {have} latent frames but FramePack takes at most {total} "
                             f"(the VAE encoding of the last 73 pixel frames); pass only the most recent {total}")
        if have < total:
            motion = F.pad(motion, (0, 0, 0, 0, total - have, 0))
        newest_first = []
        end = total
        for frames in self.buckets:
            newest_first.append(motion[:, :, end - frames:end])
            end -= frames
        tokens = []
        for proj, chunk in zip((self.proj, self.proj_2x, self.proj_4x), newest_first):
            tokens.append(proj(chunk).flatten(2).transpose(1, 2))
        return torch.cat(tokens, dim=1)


__all__ = ["FramePackMotioner"]
