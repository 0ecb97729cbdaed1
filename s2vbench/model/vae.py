"""The Wan 2.1 3D causal video VAE (z_dim 16, stride 4x8x8), key-compatible with the released ``Wan2.1_VAE.pth``.

A video of ``1 + 4k`` frames of H x W pixels becomes ``1 + k`` latent frames of H/8 x W/8. Everything in time is
causal: a frame never sees a later one. The official code never runs the network over a whole video at once:

* encoding feeds the frames in chunks of 1, 4, 4, ... and decoding feeds one latent frame at a time;
* every temporal convolution keeps the last two frames of its input from the previous chunk (the *feature
  cache*), so chunk boundaries are invisible to it;
* the temporal down- and up-samplers treat the first chunk specially: its single frame passes through without
  any temporal mixing, which is why frame 0 maps to latent 0 alone and the rest go four to one.

Because of that special first chunk, a chunked run is *not* the same function as one unchunked pass; this module
only offers the chunked one, and reproduces the official numerics (checked against a fixture made with the
official code). Latents are normalised per channel as ``(mu - mean) * inv_std`` with the released statistics.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .attention import attention
from .device import check_device

# Per-channel statistics of the released VAE's latents (from the official Wan2_1_VAE wrapper).
WAN21_LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

HISTORY_FRAMES = 2
"""Input frames a kernel-3 causal convolution needs from the previous chunk."""


class VAEConfigError(ValueError):
    """A VAE configuration value that cannot work."""


class VAEInputError(ValueError):
    """A video or latent the VAE cannot take, with what to pass instead."""


@dataclass(frozen=True)
class WanVAEConfig:
    """Architecture of the Wan 2.1 video VAE. The defaults are the released ``Wan2.1_VAE.pth``."""

    dim: int = 96
    """Base channel width; level i of the encoder works at ``dim * dim_mult[i]``."""
    z_dim: int = 16
    """Latent channels (the encoder predicts 2 * z_dim: mean and log-variance)."""
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    """Width multipliers of the resolution levels; each level but the last halves height and width."""
    num_res_blocks: int = 2
    """Residual blocks per encoder level (the decoder uses one more)."""
    attn_scales: tuple[float, ...] = ()
    """Relative resolutions (1, 1/2, ...) that get a spatial attention block after each residual block."""
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    """Per encoder downsampling step, whether it also halves time; the decoder mirrors it."""
    latent_mean: tuple[float, ...] = WAN21_LATENT_MEAN
    """Per-channel mean subtracted from the encoder's mu."""
    latent_std: tuple[float, ...] = WAN21_LATENT_STD
    """Per-channel std the centred mu is divided by (the official scale pair holds 1/std)."""

    def __post_init__(self) -> None:
        def fail(name: str, why: str) -> None:
            raise VAEConfigError(f"WanVAEConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("dim", "z_dim", "num_res_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                fail(name, "must be a positive integer")
        if len(self.dim_mult) < 2 or any((not isinstance(m, int)) or m <= 0 for m in self.dim_mult):
            fail("dim_mult", "must hold at least two positive integers")
        for i in range(1, len(self.dim_mult) - 1):
            # Each decoder upsampler halves the channels it outputs; the next level's width must allow it.
            if (self.dim * self.dim_mult[::-1][i]) % 2:
                fail("dim_mult", "every decoder level width must be even (its upsampler halves the channels)")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1:
            fail("temporal_downsample", f"needs one entry per downsampling step, i.e. {len(self.dim_mult) - 1}")
        if len(self.latent_mean) != self.z_dim or len(self.latent_std) != self.z_dim:
            fail("latent_mean", f"latent_mean and latent_std need z_dim={self.z_dim} entries each, got "
                                f"{len(self.latent_mean)} and {len(self.latent_std)}")
        if any(not s > 0 for s in self.latent_std):
            fail("latent_std", "every entry must be positive")

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(bool(t) for t in self.temporal_downsample)

    @property
    def spatial_stride(self) -> int:
        return 2 ** (len(self.dim_mult) - 1)

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a ``1 + stride * k`` frame video."""
        return 1 + (frames - 1) // self.temporal_stride

    def pixel_frames(self, latent_frames: int) -> int:
        return 1 + self.temporal_stride * (latent_frames - 1)

    def replace(self, **changes) -> WanVAEConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def tiny(cls, dim: int = 16) -> WanVAEConfig:
        """The official architecture at a small base width (``dim=16`` is ``shared/fixtures/wan21_vae_tiny``)."""
        return cls(dim=dim)


# ---- building blocks ------------------------------------------------------------------------------------
class FeatureCache:
    """Per-module state carried from one chunk of frames to the next during a chunked encode or decode.

    Keyed by module, so each layer finds its own history whatever order the layers run in."""

    FIRST_CHUNK_SEEN = "first-chunk-seen"
    """Marker of a temporal upsampler that has passed its first (not upsampled) frame."""

    def __init__(self) -> None:
        self._state: dict[int, object] = {}

    def get(self, module: nn.Module):
        return self._state.get(id(module))

    def set(self, module: nn.Module, value) -> None:
        self._state[id(module)] = value


def _triple(v) -> tuple[int, int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v, v)


class CausalConv3d(nn.Conv3d):
    """Conv3d padded symmetrically in space and only on the past side in time (``2 * padding_t`` frames), so
    output frame t depends on input frames <= t. Frames carried over from the previous chunk replace that many
    zero frames of the past padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        pt, ph, pw = _triple(padding)
        self.past_frames = 2 * pt
        self.space_pad = (pw, pw, ph, ph)

    def forward(self, x: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
        zeros = self.past_frames
        if history is not None and zeros > 0:
            x = torch.cat([history.to(x.device), x], dim=2)
            zeros -= history.shape[2]
        return super().forward(F.pad(x, (*self.space_pad, zeros, 0)))


def streamed_conv(conv: CausalConv3d, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
    """Apply ``conv`` to this chunk with the previous chunk's last input frames, and remember this chunk's."""
    if cache is None:
        return conv(x)
    history = cache.get(conv)
    out = conv(x, history)
    if x.shape[2] < HISTORY_FRAMES and history is not None:
        keep = torch.cat([history[:, :, -1:].to(x.device), x], dim=2)
    else:
        keep = x
    cache.set(conv, keep[:, :, -HISTORY_FRAMES:].clone())
    return out


class ChannelRMSNorm(nn.Module):
    """Scale each position's channel vector to unit L2 norm, times sqrt(C) and a learned per-channel gain."""

    def __init__(self, dim: int, spatial_dims: int):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, *([1] * spatial_dims)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


def _per_frame(fn, x: torch.Tensor) -> torch.Tensor:
    """Run a 2D module on every frame of [B, C, T, H, W]."""
    b, _, t = x.shape[:3]
    y = fn(x.transpose(1, 2).flatten(0, 1))
    return y.unflatten(0, (b, t)).transpose(1, 2)


class ResidualBlock(nn.Module):
    """norm-SiLU-conv, norm-SiLU-(dropout)-conv, plus a 1x1x1 shortcut when the width changes. The Sequential's
    indices (0 norm, 2 conv, 3 norm, 6 conv) are the released key names."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.residual = nn.Sequential(
            ChannelRMSNorm(in_dim, 3), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            ChannelRMSNorm(out_dim, 3), nn.SiLU(), nn.Dropout(0.0), CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
        skip = self.shortcut(x)
        for layer in self.residual:
            x = streamed_conv(layer, x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + skip


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of each frame separately (so it needs no cache)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = ChannelRMSNorm(dim, 2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def _frame(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).reshape(n, 1, 3 * c, h * w).transpose(2, 3)
        q, k, v = qkv.contiguous().chunk(3, dim=-1)
        # through the model's one attention seam, whose layout is [batch, tokens, heads, head_dim]
        y = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)  # [n, 1, hw, c]
        return self.proj(y.squeeze(1).transpose(1, 2).reshape(n, c, h, w))

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        return x + _per_frame(self._frame, x)


class Downsample(nn.Module):
    """Halve H and W (pad right/bottom by one, 3x3 stride-2 conv); with ``temporal``, then halve time too.

    The temporal conv (kernel 3, stride 2, no padding) sees the previous chunk's last frame plus this chunk,
    so 4 frames become 2 and 2 become 1. The very first chunk (one frame) passes through untouched."""

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1)) if temporal else None

    def forward(self, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
        x = _per_frame(self.resample, x)
        if self.time_conv is None:
            return x
        if cache is None:
            raise RuntimeError("temporal downsampling runs chunk by chunk; call WanVAE.encode")
        last = cache.get(self)
        cache.set(self, x[:, :, -1:].clone())
        if last is None:
            return x
        return self.time_conv(torch.cat([last.to(x.device), x], dim=2))


class Upsample(nn.Module):
    """With ``temporal``, double time first: a causal kernel-3 conv makes two output frames per input frame
    (its 2C channels split into an even and an odd frame). The very first frame is not doubled, mirroring the
    encoder. Then double H and W (nearest) and halve the channels with a 3x3 conv."""

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        # Index 0 has no parameters; the conv sits at index 1 as in the released key names.
        self.resample = nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                      nn.Conv2d(dim, dim // 2, 3, padding=1))
        self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0)) if temporal else None

    def _double_time(self, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
        if cache is None:
            raise RuntimeError("temporal upsampling runs frame by frame; call WanVAE.decode")
        state = cache.get(self)
        if state is None:
            cache.set(self, FeatureCache.FIRST_CHUNK_SEEN)
            return x
        # After the first frame the past is zero frames, exactly the conv's own causal padding.
        history = torch.zeros_like(x[:, :, :HISTORY_FRAMES]) if state is FeatureCache.FIRST_CHUNK_SEEN else state
        y = self.time_conv(x, history)
        cache.set(self, torch.cat([history, x], dim=2)[:, :, -HISTORY_FRAMES:].clone())
        b, c2, t, h, w = y.shape
        # channels [even | odd] -> frames 2i, 2i+1
        return y.view(b, 2, c2 // 2, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c2 // 2, 2 * t, h, w)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
        if self.time_conv is not None:
            x = self._double_time(x, cache)
        # nearest upsampling in float32 (bfloat16 nearest is not supported everywhere), then back
        return _per_frame(lambda f: self.resample[1](self.resample[0](f.float()).to(f.dtype)), x)


def _run(layers: nn.Sequential, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
    for layer in layers:
        if isinstance(layer, CausalConv3d):
            x = streamed_conv(layer, x, cache)
        elif isinstance(layer, (ResidualBlock, AttentionBlock, Downsample, Upsample)):
            x = layer(x, cache)
        else:
            x = layer(x)
    return x


class Encoder3d(nn.Module):
    def __init__(self, cfg: WanVAEConfig, out_channels: int):
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers: list[nn.Module] = []
        scale = 1.0
        last = len(cfg.dim_mult) - 1
        for level, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResidualBlock(d_in, d_out))
                if scale in cfg.attn_scales:
                    layers.append(AttentionBlock(d_out))
                d_in = d_out
            if level != last:
                layers.append(Downsample(d_out, temporal=bool(cfg.temporal_downsample[level])))
                scale /= 2.0
        self.downsamples = nn.Sequential(*layers)
        width = dims[-1]
        self.middle = nn.Sequential(ResidualBlock(width, width), AttentionBlock(width), ResidualBlock(width, width))
        self.head = nn.Sequential(ChannelRMSNorm(width, 3), nn.SiLU(), CausalConv3d(width, out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
        x = streamed_conv(self.conv1, x, cache)
        for part in (self.downsamples, self.middle, self.head):
            x = _run(part, x, cache)
        return x


class Decoder3d(nn.Module):
    def __init__(self, cfg: WanVAEConfig):
        super().__init__()
        mult = cfg.dim_mult
        dims = [cfg.dim * m for m in (mult[-1], *mult[::-1])]
        temporal_up = tuple(cfg.temporal_downsample)[::-1]
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0]))
        layers: list[nn.Module] = []
        scale = 1.0 / 2 ** (len(mult) - 2)
        last = len(mult) - 1
        for level, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            if level > 0:
                d_in //= 2  # the previous level's upsampler halved the channels
            for _ in range(cfg.num_res_blocks + 1):
                layers.append(ResidualBlock(d_in, d_out))
                if scale in cfg.attn_scales:
                    layers.append(AttentionBlock(d_out))
                d_in = d_out
            if level != last:
                layers.append(Upsample(d_out, temporal=bool(temporal_up[level])))
                scale *= 2.0
        self.upsamples = nn.Sequential(*layers)
        self.head = nn.Sequential(ChannelRMSNorm(dims[-1], 3), nn.SiLU(), CausalConv3d(dims[-1], 3, 3, padding=1))

    def forward(self, x: torch.Tensor, cache: FeatureCache | None) -> torch.Tensor:
        x = streamed_conv(self.conv1, x, cache)
        for part in (self.middle, self.upsamples, self.head):
            x = _run(part, x, cache)
        return x


# ---- the VAE ---------------------------------------------------------------------------------------------
LatentScale = tuple[torch.Tensor, torch.Tensor]
"""(mean, inv_std), each [z_dim]: the official normalisation pair."""


class WanVAE(nn.Module):
    """The Wan 2.1 video VAE (the official ``WanVAE_``): ``encode`` a [B, 3, 1+4k, H, W] video in [-1, 1] to
    normalised latents [B, z_dim, 1+k, H/8, W/8], ``decode`` them back. Build under ``torch.device("meta")``
    and load with :func:`load_vae` for the released weights."""

    def __init__(self, cfg: WanVAEConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or WanVAEConfig()
        self.encoder = Encoder3d(cfg, 2 * cfg.z_dim)
        self.conv1 = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder3d(cfg)
        # The statistics are not in the released state dict (the official wrapper holds them); keep them out.
        self.register_buffer("latent_mean", torch.tensor(cfg.latent_mean), persistent=False)
        self.register_buffer("latent_inv_std", 1.0 / torch.tensor(cfg.latent_std), persistent=False)

    def _scale(self, scale: LatentScale | None, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, inv_std = scale if scale is not None else (self.latent_mean, self.latent_inv_std)
        shape = (1, self.cfg.z_dim, 1, 1, 1)
        return (mean.to(like.device, like.dtype).view(shape), inv_std.to(like.device, like.dtype).view(shape))

    def check_video(self, video: torch.Tensor) -> None:
        """Raise :class:`VAEInputError` unless ``video`` is [B, 3, 1 + 4k, H, W] with H, W multiples of 8."""
        s, st = self.cfg.spatial_stride, self.cfg.temporal_stride
        if video.ndim != 5:
            raise VAEInputError(f"the VAE encodes a video [B, 3, T, H, W], got a tensor of shape {tuple(video.shape)}; "
                                f"add the batch dimension with video.unsqueeze(0) or the time one with unsqueeze(2)")
        _b, c, t, h, w = video.shape
        if c != 3:
            raise VAEInputError(f"the VAE encodes RGB video with 3 channels in dim 1, got {c} channels "
                                f"(shape {tuple(video.shape)}); pass [B, 3, T, H, W] in [-1, 1]")
        if t < 1 or (t - 1) % st:
            lo = 1 + st * max((t - 1) // st, 0)
            raise VAEInputError(f"the VAE encodes 1 + {st}k frames (the first alone, then groups of {st}), got {t}; "
                                f"trim to {lo} or pad to {lo + st} frames")
        if h % s or w % s or h == 0 or w == 0:
            raise VAEInputError(f"video height and width must be positive multiples of {s} (the spatial stride), got "
                                f"{h} x {w}; resize or crop to {max(s, h // s * s)} x {max(s, w // s * s)}")

    def check_latent(self, z: torch.Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.cfg.z_dim:
            raise VAEInputError(f"the VAE decodes latents [B, {self.cfg.z_dim}, T, h, w], got shape {tuple(z.shape)}")

    def encode_mu(self, video: torch.Tensor) -> torch.Tensor:
        """Un-normalised posterior mean, encoding frames in chunks 1, 4, 4, ... with the feature cache."""
        self.check_video(video)
        cache = FeatureCache()
        st = self.cfg.temporal_stride
        chunks = [video[:, :, :1]] + [video[:, :, i:i + st] for i in range(1, video.shape[2], st)]
        out = torch.cat([self.encoder(chunk, cache) for chunk in chunks], dim=2)
        mu, _log_var = self.conv1(out).chunk(2, dim=1)
        return mu

    def encode(self, video: torch.Tensor, scale: LatentScale | None = None) -> torch.Tensor:
        """[B, 3, 1+4k, H, W] in [-1, 1] -> normalised latents ``(mu - mean) * inv_std`` [B, z, 1+k, H/8, W/8].

        ``scale`` overrides the (mean, inv_std) pair of the config."""
        mu = self.encode_mu(video)
        mean, inv_std = self._scale(scale, mu)
        return (mu - mean) * inv_std

    def decode(self, z: torch.Tensor, scale: LatentScale | None = None) -> torch.Tensor:
        """Normalised latents [B, z, T, h, w] -> video [B, 3, 1 + 4(T-1), 8h, 8w], one latent frame at a time.
        Not clamped (the official wrapper clamps to [-1, 1] afterwards; see :func:`to_uint8_frames`)."""
        self.check_latent(z)
        mean, inv_std = self._scale(scale, z)
        x = self.conv2(z / inv_std + mean)
        cache = FeatureCache()
        return torch.cat([self.decoder(x[:, :, i:i + 1], cache) for i in range(x.shape[2])], dim=2)


def count_parameters(module: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in module.parameters())


def load_vae(path: str | Path, cfg: WanVAEConfig | None = None, device: str | torch.device = "cpu",
             dtype: torch.dtype = torch.float32) -> WanVAE:
    """A :class:`WanVAE` with weights from ``Wan2.1_VAE.pth`` (a plain state dict; loaded with
    ``weights_only=True``, never executing pickled code) or an official-key ``.safetensors`` file, strictly.
    Without ``cfg`` the base width is read from the checkpoint (the official architecture otherwise)."""
    from .checkpoint import CheckpointError, load_state_dict, load_torch_file

    device = check_device(device)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"VAE checkpoint {path} does not exist; pass the released Wan2.1_VAE.pth (it is in "
                              f"the Wan2.2-S2V-14B folder) or a .safetensors file with the same keys")
    if path.suffix == ".safetensors":
        sd = load_state_dict(path)
    else:
        sd = load_torch_file(path, "VAE checkpoint", f"download it again, or if you trust the file, convert it once: "
                             f"python -c \"import torch; from safetensors.torch import save_file; save_file(torch.load("
                             f"'{path}', weights_only=False), 'Wan2.1_VAE.safetensors')\" and pass the .safetensors file")
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        held = "values other than tensors" if isinstance(sd, dict) else f"a {type(sd).__name__}"
        raise CheckpointError(f"VAE checkpoint {path} holds {held}, not a state dict of tensors; pass the released "
                              f"Wan2.1_VAE.pth or a .safetensors file with the same keys")
    if cfg is None and "encoder.conv1.weight" in sd:
        # the base width is the first conv's output channels (96 in Wan2.1_VAE.pth); the rest is fixed
        cfg = WanVAEConfig(dim=int(sd["encoder.conv1.weight"].shape[0]))
    with torch.device("meta"):
        vae = WanVAE(cfg)
    expected = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in sd.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))[:5]
        extra = sorted(set(found) - set(expected))[:5]
        wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])[:5]
        raise CheckpointError(f"{path} does not fit WanVAE({vae.cfg}): missing {missing}, unexpected {extra}, "
                              f"wrong shapes {wrong}; pass the matching WanVAEConfig (dim=96 for Wan2.1_VAE.pth)")
    vae.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True, assign=True)
    # the non-persistent statistics were created on meta; rebuild them for real
    vae.latent_mean = torch.tensor(vae.cfg.latent_mean, dtype=dtype)
    vae.latent_inv_std = (1.0 / torch.tensor(vae.cfg.latent_std)).to(dtype)
    return vae.to(device).eval().requires_grad_(False)


def to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """[3, T, H, W] in [-1, 1] -> [T, H, W, 3] uint8, clamped as the official wrapper clamps decoded video."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).contiguous()


__all__ = [
    "WAN21_LATENT_MEAN",
    "WAN21_LATENT_STD",
    "CausalConv3d",
    "FeatureCache",
    "VAEConfigError",
    "VAEInputError",
    "WanVAE",
    "WanVAEConfig",
    "count_parameters",
    "load_vae",
    "to_uint8_frames",
]
