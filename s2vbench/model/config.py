"""Typed configuration of the Wan-S2V DiT and the preset registry.

Field names follow the official ``WanModel_S2V`` constructor where one exists, so a value can be checked
against ``wan/configs/wan_s2v_14B.py`` by eye. Every config is validated on construction; an invalid value
raises :class:`ConfigError` naming the field and what would fix it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


class ConfigError(ValueError):
    """A configuration value that cannot work, with the field it belongs to."""


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class WanS2VConfig:
    """Architecture of one Wan-S2V diffusion transformer."""

    dim: int = 5120
    """Hidden width of the residual stream."""
    ffn_dim: int = 13824
    """Inner width of each block's feed-forward network."""
    num_heads: int = 40
    """Attention heads in self-, text cross- and audio cross-attention."""
    num_layers: int = 40
    """Number of transformer blocks."""
    in_dim: int = 16
    """Channels of the VAE latent fed to the patch embedding (and to FramePack)."""
    out_dim: int = 16
    """Channels of the predicted velocity."""
    patch_size: tuple[int, int, int] = (1, 2, 2)
    """(t, h, w) kernel and stride of the patch embedding."""
    text_dim: int = 4096
    """Width of the text-encoder embedding (umT5-XXL)."""
    text_len: int = 512
    """Text tokens after zero padding; all of them, padding included, are attended."""
    freq_dim: int = 256
    """Width of the sinusoidal timestep embedding."""
    eps: float = 1e-6
    """Epsilon of the block LayerNorms and of the q/k RMSNorms."""
    qk_norm: bool = True
    """RMSNorm over the full width on q and k before the head split."""
    cross_attn_norm: bool = True
    """Affine LayerNorm (``norm3``) before text cross-attention."""
    rope_theta: float = 10000.0
    """RoPE base."""
    ref_rope_time: int = 30
    """RoPE time position of the reference-image tokens."""
    cond_dim: int = 16
    """Channels of the pose latent fed to ``cond_encoder``; 0 removes it."""
    audio_dim: int = 1024
    """Width of the wav2vec2 hidden states."""
    audio_layers: int = 25
    """Hidden states mixed by the audio encoder (embedding output + transformer layers)."""
    num_audio_token: int = 4
    """Local audio tokens per latent frame, before the learned padding token is appended."""
    enable_adain: bool = True
    """Condition each audio injection on the global audio token through AdaLN ("attn_norm" mode)."""
    audio_inject_layers: tuple[int, ...] = (0, 4, 8, 12, 16, 20, 24, 27, 30, 33, 36, 39)
    """Blocks after which audio is injected, ascending."""
    zero_timestep: bool = True
    """Modulate ref and motion tokens with the timestep-0 embedding instead of t."""
    framepack_buckets: tuple[int, int, int] = (1, 2, 16)
    """Latent frames, newest first, compressed by 1x, 2x and 4x in FramePack."""
    motion_frames: int = 73
    """Pixel frames of motion history; the VAE makes (n+3)//4 latent frames of them."""

    def __post_init__(self) -> None:
        validate_config(self)

    # ---- derived quantities -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_split(self) -> tuple[int, int, int]:
        """Complex pairs of each head given to the (t, h, w) RoPE axes."""
        c = self.head_dim // 2
        return (c - 2 * (c // 3), c // 3, c // 3)

    @property
    def motion_latent_frames(self) -> int:
        return (self.motion_frames + 3) // 4

    @property
    def patch_numel(self) -> int:
        return math.prod(self.patch_size)

    def replace(self, **changes) -> "WanS2VConfig":
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


def _fail(name: str, value, why: str) -> None:
    raise ConfigError(f"WanS2VConfig.{name}={value!r}: {why}")


def validate_config(cfg: WanS2VConfig) -> None:
    """Raise :class:`ConfigError` for the first field that cannot work."""
    for name in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "text_dim", "text_len",
                 "freq_dim", "audio_dim", "audio_layers", "num_audio_token", "motion_frames"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            _fail(name, value, "must be a positive integer")
    if not isinstance(cfg.cond_dim, int) or cfg.cond_dim < 0:
        _fail("cond_dim", cfg.cond_dim, "must be a non-negative integer (0 disables the pose encoder)")
    if cfg.dim % cfg.num_heads:
        _fail("num_heads", cfg.num_heads,
              f"dim={cfg.dim} is not divisible by it; valid head counts are {_divisors(cfg.dim)}")
    if cfg.head_dim % 2 or cfg.head_dim < 6:
        _fail("num_heads", cfg.num_heads,
              f"head_dim={cfg.head_dim} must be even and at least 6 so 3D RoPE has a pair per axis")
    if cfg.dim % 4:
        _fail("dim", cfg.dim, "must be a multiple of 4 (the audio conv stack works at dim/4 and dim/2)")
    if cfg.freq_dim % 2:
        _fail("freq_dim", cfg.freq_dim, "must be even (cos and sin halves)")
    if len(cfg.patch_size) != 3 or any((not isinstance(p, int)) or p <= 0 for p in cfg.patch_size):
        _fail("patch_size", cfg.patch_size, "must be three positive integers (t, h, w)")
    if not cfg.eps > 0:
        _fail("eps", cfg.eps, "must be positive")
    if not cfg.rope_theta > 1:
        _fail("rope_theta", cfg.rope_theta, "must be greater than 1")
    layers = cfg.audio_inject_layers
    if any((not isinstance(i, int)) or i < 0 or i >= cfg.num_layers for i in layers):
        _fail("audio_inject_layers", layers, f"every entry must be a block index in [0, {cfg.num_layers})")
    if list(layers) != sorted(set(layers)):
        _fail("audio_inject_layers", layers, "must be strictly ascending with no repeats")
    if tuple(cfg.framepack_buckets) != (1, 2, 16):
        _fail("framepack_buckets", cfg.framepack_buckets,
              "only the official (1, 2, 16) buckets are implemented (their 1x/2x/4x projectors are fixed)")
    if sum(cfg.framepack_buckets) != cfg.motion_latent_frames:
        _fail("motion_frames", cfg.motion_frames,
              f"gives {cfg.motion_latent_frames} latent frames but FramePack buckets hold "
              f"{sum(cfg.framepack_buckets)}; use motion_frames=73")


@dataclass(frozen=True)
class ClipShape:
    """The latent geometry of one training or sampling clip."""

    latent_frames: int
    """Latent frames F of the noisy clip (infer_frames = 4F pixel frames at 16 fps)."""
    latent_height: int
    """Latent height h = pixel height / 8."""
    latent_width: int
    """Latent width w = pixel width / 8."""
    text_tokens: int = 512
    """Unpadded text tokens of the prompt."""
    with_motion: bool = True
    """Whether the clip carries FramePack motion tokens (False for the first clip)."""

    @property
    def infer_frames(self) -> int:
        return 4 * self.latent_frames


@dataclass(frozen=True)
class Preset:
    """A named model configuration with the clip it is benchmarked on."""

    name: str
    """Registry key."""
    model: WanS2VConfig
    """Architecture."""
    clip: ClipShape
    """Default workload geometry."""
    description: str = ""
    """One line for listings."""


def _tiny() -> Preset:
    model = WanS2VConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=4, text_dim=48, text_len=16,
                         freq_dim=32, audio_dim=32, audio_inject_layers=(0, 2, 3))
    return Preset("tiny", model, ClipShape(4, 16, 16, text_tokens=10),
                  "the configuration of shared/fixtures/wan_s2v_tiny (fixture parity)")


def _small() -> Preset:
    model = WanS2VConfig(dim=256, ffn_dim=704, num_heads=4, num_layers=4, audio_inject_layers=(0, 2, 3))
    return Preset("small", model, ClipShape(8, 32, 32, text_tokens=64),
                  "CPU benchmark size: every feature on, 14b's attention:matmul FLOP ratio")


def _14b() -> Preset:
    # The paper's training clip: 48 frames of 1024x768, i.e. 44,544 tokens with motion.
    return Preset("14b", WanS2VConfig(), ClipShape(12, 96, 128, text_tokens=512),
                  "official Wan-S2V-14B (16.3 B parameters)")


def _14b_2layer() -> Preset:
    # What one GPU can hold of the 14b for a per-layer report: full width, 2 blocks and their 2 injectors.
    return Preset("14b-2layer", WanS2VConfig(num_layers=2, audio_inject_layers=(0, 1)), _14b().clip,
                  "14b width, 2 blocks with 2 audio injections, the paper's 44,544-token clip (single-GPU report)")


PRESETS: dict[str, Preset] = {p.name: p for p in (_tiny(), _small(), _14b(), _14b_2layer())}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


__all__ = ["ClipShape", "ConfigError", "PRESETS", "Preset", "WanS2VConfig", "get_preset", "validate_config"]
