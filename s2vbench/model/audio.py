"""The audio path inside the DiT: layer mixing, causal-conv compression and per-frame injection.

Module and attribute names reproduce the official state_dict keys, including the ``casual`` spelling of
``casual_audio_encoder`` (see :class:`s2vbench.model.model.WanS2V`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..kernels.causal_conv import causal_conv_ln_silu_reference
from .layers import CrossAttention, at_least_fp32, fp32_island, linear_as_input


class CausalConv1d(nn.Module):
    """Conv1d made causal by replicate-padding ``kernel_size - 1`` steps on the left (parameters only: the
    conv always runs fused with the LayerNorm and SiLU after it, see :func:`conv_norm_silu`)."""

    def __init__(self, chan_in: int, chan_out: int, kernel_size: int = 3, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv1d(chan_in, chan_out, kernel_size, stride=stride)


CONV_BACKENDS = ("torch", "triton")


def conv_norm_silu(conv: CausalConv1d, x: torch.Tensor, groups: int = 1, backend: str = "torch") -> torch.Tensor:
    """Causal conv, then LayerNorm (no affine, eps 1e-6) over each of ``groups`` channel groups, then SiLU:
    [B, C, T] -> [B, ceil(T / stride), C'], in x's dtype whatever the parameters' dtype."""
    w = conv.conv.weight.to(x.dtype)
    b = conv.conv.bias.to(x.dtype)
    stride = conv.conv.stride[0]
    if backend == "triton":
        from ..kernels.causal_conv.triton_op import causal_conv_ln_silu

        return causal_conv_ln_silu(x, w, b, stride, groups)
    if backend != "torch":
        raise ValueError(f"unknown conv backend {backend!r}; choose one of {CONV_BACKENDS}")
    return causal_conv_ln_silu_reference(x, w, b, stride, groups)


class AudioConvEncoder(nn.Module):
    """Causal Conv1d stack that turns mixed wav2vec2 features into per-latent-frame audio tokens.

    Local path: ``conv1_local`` makes ``num_tokens`` channel groups of dim/4, each compressed by the shared
    ``conv2`` (stride 2) and ``conv3`` (stride 2) to ``dim``, then the learned padding token is appended.
    Global path: ``conv1_global`` then the same shared convs and ``final_linear``: one token for AdaLN.
    """

    def __init__(self, in_dim: int, dim: int, num_tokens: int, need_global: bool):
        super().__init__()
        self.num_tokens = num_tokens
        self.conv1_local = CausalConv1d(in_dim, dim // 4 * num_tokens, 3, stride=1)
        self.conv1_global = CausalConv1d(in_dim, dim // 4, 3, stride=1) if need_global else None
        self.conv2 = CausalConv1d(dim // 4, dim // 2, 3, stride=2)
        self.conv3 = CausalConv1d(dim // 2, dim, 3, stride=2)
        self.final_linear = nn.Linear(dim, dim) if need_global else None
        self.padding_tokens = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.conv_backend = "torch"
        """Implementation of the conv + LayerNorm + SiLU units: "torch" or "triton"."""

    def _compress(self, x: torch.Tensor) -> torch.Tensor:
        """[N, T, dim/4] after conv1 + norm + SiLU -> [N, T'', dim] through the shared stride-2 convs."""
        x = conv_norm_silu(self.conv2, x.transpose(1, 2), backend=self.conv_backend)
        return conv_norm_silu(self.conv3, x.transpose(1, 2), backend=self.conv_backend)

    def forward(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """feats [B, T, in_dim] -> (local [B, T'', num_tokens + 1, dim], global [B, T'', 1, dim] or None)."""
        b = feats.shape[0]
        x = feats.transpose(1, 2)
        # conv1_local's output channels are num_tokens groups of dim/4 (token-major), each normalised alone
        local = conv_norm_silu(self.conv1_local, x, groups=self.num_tokens, backend=self.conv_backend)
        local = local.unflatten(2, (self.num_tokens, -1)).transpose(1, 2).flatten(0, 1)  # [(B n), T, dim/4]
        local = self._compress(local).unflatten(0, (b, self.num_tokens)).transpose(1, 2)  # [B, T'', n, dim]
        pad = self.padding_tokens.to(local.dtype).expand(b, local.shape[1], 1, -1)
        local = torch.cat([local, pad], dim=2)
        if self.conv1_global is None:
            return local, None
        glob = self._compress(conv_norm_silu(self.conv1_global, x, backend=self.conv_backend))
        return local, linear_as_input(self.final_linear, glob).unsqueeze(2)


class CausalAudioEncoder(nn.Module):
    """SiLU-gated, sum-normalised learnable average over the wav2vec2 layers, then the conv encoder.

    Runs entirely in >= float32, as the official code does under its float32 autocast."""

    def __init__(self, in_dim: int, dim: int, num_layers: int, num_tokens: int, need_global: bool):
        super().__init__()
        self.weights = nn.Parameter(torch.full((1, num_layers, 1, 1), 0.01))
        self.encoder = AudioConvEncoder(in_dim, dim, num_tokens, need_global)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """features [B, layers, in_dim, T] -> (local [B, T'', n+1, dim], global [B, T'', 1, dim] or None)."""
        with fp32_island(features.device.type):
            features = at_least_fp32(features)
            w = F.silu(self.weights.to(features.dtype))
            mixed = (features * w / w.sum(dim=1, keepdim=True)).sum(dim=1)  # [B, in_dim, T]
            return self.encoder(mixed.transpose(1, 2))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.weights.fill_(0.01)
            self.encoder.padding_tokens.zero_()


class AudioAdaLN(nn.Module):
    """LayerNorm (eps 1e-5, no affine) modulated by shift and scale from the global audio token.

    Same parameters and math as diffusers' ``AdaLayerNorm(output_dim=2*dim, chunk_dim=1)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x [N, L, C]; cond [N, C] -> [N, L, C]."""
        shift, scale = self.linear(F.silu(cond)).chunk(2, dim=1)
        with fp32_island(x.device.type):
            y = F.layer_norm(at_least_fp32(x), x.shape[-1:], eps=1e-5)
            return y * (1 + at_least_fp32(scale)[:, None]) + at_least_fp32(shift)[:, None]


class AudioInjector(nn.Module):
    """Container of the per-injection modules: ``injector[k]`` (cross-attention to a frame's audio tokens)
    and ``injector_adain_layers[k]``. It has no forward; :meth:`inject` calls the two submodules, so each
    pair can be sharded and prefetched as one unit."""

    def __init__(self, dim: int, num_heads: int, num_injections: int, eps: float, enable_adain: bool):
        super().__init__()
        self.injector = nn.ModuleList(CrossAttention(dim, num_heads, eps, qk_norm=True) for _ in range(num_injections))
        self.injector_adain_layers = (nn.ModuleList(AudioAdaLN(dim) for _ in range(num_injections))
                                      if enable_adain else None)

    def inject(self, k: int, x_noisy: torch.Tensor, audio_local: torch.Tensor, audio_global: torch.Tensor | None,
               tokens_per_frame: int, first_token: int = 0) -> torch.Tensor:
        """The residual that injection ``k`` adds to the noisy-video tokens.

        x_noisy [B, n, C] holds noisy tokens ``first_token .. first_token + n`` of the clip (a contiguous
        window, possibly starting or ending inside a latent frame). Each token attends only to the audio
        tokens of its own latent frame, so the window is padded to whole frames, batched per frame, and
        the padding dropped again. audio_local [B, F, n_tok, C]; audio_global [B, F, 1, C] or None.
        """
        b, n, c = x_noisy.shape
        hw = tokens_per_frame
        if n == 0:
            # No noisy token in this window: still call the modules (on empty tensors), so every rank runs the
            # same modules and sharded-parameter collectives stay matched across ranks.
            f0 = f1 = front = back = 0
        else:
            f0, f1 = first_token // hw, (first_token + n - 1) // hw + 1
            front, back = first_token - f0 * hw, f1 * hw - first_token - n
        frames = F.pad(x_noisy, (0, 0, front, back)).reshape(b * (f1 - f0), hw, c)
        if self.injector_adain_layers is not None:
            frames = self.injector_adain_layers[k](frames, audio_global[:, f0:f1, 0].flatten(0, 1))
        else:
            with fp32_island(frames.device.type):
                frames = F.layer_norm(at_least_fp32(frames), (c,), eps=1e-6)
        out = self.injector[k](frames, audio_local[:, f0:f1].flatten(0, 1))
        return out.reshape(b, (f1 - f0) * hw, c)[:, front:front + n]


__all__ = ["AudioAdaLN", "AudioConvEncoder", "AudioInjector", "CONV_BACKENDS", "CausalAudioEncoder", "CausalConv1d",
           "conv_norm_silu"]
