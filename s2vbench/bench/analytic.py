"""Closed-form costs of Wan-S2V, from the real shapes. The performance model builds on these.

FLOPs count a multiply-add as 2. A forward's FLOPs split into
``attention`` (the softmax(QK^T)V cores of self-attention, 4 S^2 D per layer),
``cross_attention`` (the cores of text and audio cross-attention) and
``matmul`` (every linear and convolution: projections, FFN, embeddings, FramePack, audio encoder, head).
A training step costs 3x its forward (backward = 2x), plus one more forward of the blocks with activation
checkpointing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..model.config import WanS2VConfig
from ..model.sequence import FRAMEPACK_KERNELS, SequenceLayout


@dataclass(frozen=True)
class ForwardFlops:
    """FLOPs of one forward pass of one sample."""

    attention: float
    """Self-attention cores over the whole sequence."""
    cross_attention: float
    """Text and audio cross-attention cores."""
    matmul: float
    """All linear layers and convolutions."""

    @property
    def total(self) -> float:
        return self.attention + self.cross_attention + self.matmul

    @property
    def attention_to_matmul(self) -> float:
        return self.attention / self.matmul


def forward_flops(cfg: WanS2VConfig, layout: SequenceLayout, infer_frames: int | None = None) -> ForwardFlops:
    """Forward FLOPs of one clip with the given token layout (batch 1)."""
    d, s, n = cfg.dim, layout.total, layout.noisy
    frames = layout.grid[0] * cfg.patch_size[0]
    text = cfg.text_len
    tok_audio = cfg.num_audio_token + 1
    per_block = (2 * s * d * d * 4                  # q, k, v, o of self-attention
                 + 2 * s * d * d * 2                # q, o of text cross-attention
                 + 2 * text * d * d * 2             # k, v of text cross-attention
                 + 2 * s * d * cfg.ffn_dim * 2)     # FFN
    per_injection = (2 * n * d * d * 2                        # q, o on noisy tokens
                     + 2 * frames * tok_audio * d * d * 2     # k, v on the frames' audio tokens
                     + (2 * frames * d * 2 * d if cfg.enable_adain else 0))  # AdaLN shift/scale
    injections = len(cfg.audio_inject_layers)
    patch = cfg.in_dim * cfg.patch_numel
    embed = 2 * (n + layout.ref) * patch * d
    if cfg.cond_dim:
        embed += 2 * n * cfg.cond_dim * cfg.patch_numel * d
    for (gt, gh, gw), kernel in zip(layout.motion_grids, FRAMEPACK_KERNELS):
        embed += 2 * gt * gh * gw * cfg.in_dim * math.prod(kernel) * d
    embed += 2 * text * (cfg.text_dim * d + d * d)               # text embedding MLP
    embed += 2 * 2 * (cfg.freq_dim * d + d * d + d * 6 * d)      # time embedding + projection (t and zero)
    head = 2 * n * d * cfg.out_dim * cfg.patch_numel
    # Audio encoder over 73 + I frames (I = 4F video frames): conv1 at full rate, conv2 at 1/2, conv3 at 1/4.
    t_audio = (infer_frames if infer_frames is not None else 4 * frames) + cfg.motion_frames
    t2, t4 = -(-t_audio // 2), -(-(-(-t_audio // 2)) // 2)
    groups = cfg.num_audio_token + (1 if cfg.enable_adain else 0)
    audio = (2 * t_audio * cfg.audio_dim * 3 * (d // 4) * groups
             + 2 * t2 * (d // 4) * 3 * (d // 2) * groups
             + 2 * t4 * (d // 2) * 3 * d * groups
             + (2 * t4 * d * d if cfg.enable_adain else 0))
    matmul = cfg.num_layers * per_block + injections * per_injection + embed + head + audio
    attention = cfg.num_layers * 4 * s * s * d
    cross = cfg.num_layers * 4 * s * text * d + injections * 4 * n * tok_audio * d
    return ForwardFlops(float(attention), float(cross), float(matmul))


__all__ = ["ForwardFlops", "forward_flops"]
