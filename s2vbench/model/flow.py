"""Flow-matching training of Wan-S2V.

``x_t = t * eps + (1 - t) * x0`` with t in [0, 1]; the model predicts the velocity ``eps - x0`` from
``x_t`` and the timestep ``1000 t``. Timesteps are drawn shifted towards noise, ``t = s u / (1 + (s - 1) u)``
with u uniform. Every random draw of a sample comes from a generator seeded by (seed, step, sample index),
never from global RNG state, so a context-parallel group (which shares the sample index) draws identically
and a rerun reproduces a step exactly.

The loss is returned as a sum over the noisy-video tokens and a token count, so data- and context-parallel
code can divide by a globally all-reduced count.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from .config import ClipShape, WanS2VConfig
from .model import WanS2V

NUM_TRAIN_TIMESTEPS = 1000


def sample_generator(seed: int, step: int, sample_index: int) -> torch.Generator:
    """A CPU generator whose state is a hash of (seed, step, sample index)."""
    digest = hashlib.blake2b(f"{seed}:{step}:{sample_index}".encode(), digest_size=8).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest, "little") >> 1)


def shift_timestep(u: torch.Tensor, shift: float) -> torch.Tensor:
    """Map t in [0, 1] towards 1 (noise): ``shift * u / (1 + (shift - 1) * u)``."""
    return shift * u / (1 + (shift - 1) * u)


def draw_noise_and_time(shape: tuple[int, ...], seed: int, step: int, sample_index: int,
                        shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise [shape] float32, t scalar float64 in (0, 1)) for one sample, on CPU."""
    g = sample_generator(seed, step, sample_index)
    u = torch.rand((), generator=g, dtype=torch.float64)
    noise = torch.randn(shape, generator=g, dtype=torch.float32)
    return noise, shift_timestep(u, shift)


@dataclass
class S2VBatch:
    """One training batch (all items share one clip shape)."""

    latents: torch.Tensor
    """[B, in_dim, F, h, w] clean video latents x0."""
    context: torch.Tensor
    """[B, L, text_dim] text embeddings."""
    ref_latents: torch.Tensor
    """[B, in_dim, 1, h, w] reference-image latents."""
    audio_input: torch.Tensor
    """[B, 25, audio_dim, 4F] wav2vec2 features per video frame."""
    sample_index: torch.Tensor
    """[B] int64 global dataset indices; they, with seed and step, fix each sample's noise and timestep."""
    motion_latents: torch.Tensor | None = None
    """[B, in_dim, 19, h, w] FramePack history, or None for first-clip samples."""
    cond_states: torch.Tensor | None = None
    """[B, cond_dim, F, h, w] pose latents, or None."""

    def to(self, device: torch.device | str) -> "S2VBatch":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return S2VBatch(**moved)


def synthetic_batch(cfg: WanS2VConfig, clip: ClipShape, batch_size: int = 1, seed: int = 0,
                    first_index: int = 0) -> S2VBatch:
    """Random data of the right shapes (latents, text, ref, motion, pose, audio features)."""
    g = torch.Generator().manual_seed(seed)
    f, h, w = clip.latent_frames, clip.latent_height, clip.latent_width

    def rnd(*shape):
        return torch.randn(shape, generator=g)

    return S2VBatch(
        latents=rnd(batch_size, cfg.in_dim, f, h, w),
        context=rnd(batch_size, clip.text_tokens, cfg.text_dim),
        ref_latents=rnd(batch_size, cfg.in_dim, 1, h, w),
        audio_input=rnd(batch_size, cfg.audio_layers, cfg.audio_dim, clip.infer_frames),
        sample_index=torch.arange(first_index, first_index + batch_size),
        motion_latents=rnd(batch_size, cfg.in_dim, cfg.motion_latent_frames, h, w) if clip.with_motion else None,
        cond_states=rnd(batch_size, cfg.cond_dim, f, h, w) if cfg.cond_dim else None,
    )


@dataclass
class FlowLoss:
    """Squared velocity error over noisy-video tokens, as a sum and counts."""

    loss_sum: torch.Tensor
    """Sum of squared errors over all predicted elements (float32 scalar, differentiable)."""
    num_tokens: int
    """Noisy-video tokens that contributed."""
    elements_per_token: int
    """Predicted values per token (out_dim * prod(patch_size))."""

    @property
    def mean(self) -> torch.Tensor:
        return self.loss_sum / (self.num_tokens * self.elements_per_token)


def batch_forward(model: WanS2V, batch: S2VBatch, t: torch.Tensor, audio_input: torch.Tensor | None = None):
    """``model.forward_tokens`` on the batch's clean latents at timesteps ``t`` (the batch's audio, or
    ``audio_input``): one of a sampler's forwards, as the harness times and counts it."""
    return model.forward_tokens(batch.latents, t, batch.context, batch.ref_latents,
                                batch.audio_input if audio_input is None else audio_input, batch.motion_latents,
                                batch.cond_states)


def flow_matching_loss(model: WanS2V, batch: S2VBatch, seed: int, step: int, shift: float = 3.0) -> FlowLoss:
    """Noise the batch with its own (seed, step, sample index) draws and score the model's velocity on the
    noisy tokens of its sequence window (all of them, unless context parallelism shards the sequence)."""
    x0 = batch.latents
    draws = [draw_noise_and_time(tuple(x0.shape[1:]), seed, step, int(i), shift) for i in batch.sample_index]
    noise = torch.stack([d[0] for d in draws]).to(device=x0.device, dtype=x0.dtype)
    t = torch.stack([d[1] for d in draws]).to(device=x0.device)
    tb = t.to(x0.dtype).view(-1, 1, 1, 1, 1)
    xt = tb * noise + (1 - tb) * x0
    pred, _, win = model.forward_tokens(xt, t * NUM_TRAIN_TIMESTEPS, batch.context, batch.ref_latents,
                                        batch.audio_input, batch.motion_latents, batch.cond_states)
    target = model.patchify(noise - x0)[:, win.first_token:win.first_token + win.num_noisy].to(pred.dtype)
    loss_sum = (pred - target).pow(2).sum()
    return FlowLoss(loss_sum, pred.shape[0] * pred.shape[1], pred.shape[2])


@dataclass
class TrainConfig:
    """Optimiser and numerics of ``train_step``."""

    seed: int = 0
    """Root of every sample's noise and timestep draw."""
    lr: float = 1e-4
    """AdamW learning rate."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    eps: float = 1e-8
    """AdamW epsilon."""
    timestep_shift: float = 3.0
    """Shift of the timestep distribution (the S2V sampling shift)."""
    dtype: str = "float32"
    """Compute dtype: "float32", or "bfloat16" autocast with the official float32 islands."""
    activation_checkpointing: bool = False
    """Recompute each block in the backward pass."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this value (None: no clipping)."""

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"TrainConfig.dtype={self.dtype!r}: choose 'float32' or 'bfloat16'")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr={self.lr!r}: must be positive")
        if not self.timestep_shift > 0:
            raise ValueError(f"TrainConfig.timestep_shift={self.timestep_shift!r}: must be positive")


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=cfg.betas,
                             eps=cfg.eps, weight_decay=cfg.weight_decay)


@dataclass
class StepStats:
    """What one ``train_step`` did."""

    loss: float
    """Mean squared velocity error of the batch."""
    num_tokens: int
    """Noisy-video tokens in the loss."""
    grad_norm: float | None
    """Global gradient norm before clipping (None unless clipping is on)."""


def compute_autocast(device_type: str, dtype: str):
    """What a ``dtype`` step runs its forward under: bf16 autocast for "bfloat16" (the model's fp32 islands stay
    float32), nothing for "float32"."""
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def accumulate_gradients(model: WanS2V, batches: list[S2VBatch], step: int, cfg: TrainConfig) -> tuple[float, int, int]:
    """Backward of every micro-batch's loss *sum*; returns (loss sum, noisy tokens, values per token). Dividing
    the gradients once by the total afterwards makes accumulation exact for any micro-batch shapes."""
    device_type = batches[0].latents.device.type
    total_loss, tokens, per_token = 0.0, 0, 1
    for batch in batches:
        with compute_autocast(device_type, cfg.dtype):
            loss = flow_matching_loss(model, batch, cfg.seed, step, cfg.timestep_shift)
        loss.loss_sum.backward()
        total_loss += float(loss.loss_sum.detach())
        tokens += loss.num_tokens
        per_token = loss.elements_per_token
    return total_loss, tokens, per_token


def scale_gradients(model: torch.nn.Module, factor: float) -> None:
    for p in model.parameters():
        if p.grad is not None:
            p.grad.mul_(factor)


def train_step(model: WanS2V, optimizer: torch.optim.Optimizer, batch: S2VBatch | list[S2VBatch], step: int,
               cfg: TrainConfig) -> StepStats:
    """One optimisation step: forward and backward of each micro-batch (gradient accumulation when ``batch`` is
    a list), the mean flow-matching loss over all of them, optional clipping, AdamW update."""
    model.train()
    model.activation_checkpointing = cfg.activation_checkpointing
    optimizer.zero_grad(set_to_none=True)
    batches = batch if isinstance(batch, list) else [batch]
    loss_sum, tokens, per_token = accumulate_gradients(model, batches, step, cfg)
    scale_gradients(model, 1.0 / (tokens * per_token))
    grad_norm = None
    if cfg.grad_clip is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
    optimizer.step()
    return StepStats(loss_sum / (tokens * per_token), tokens, grad_norm)


__all__ = ["FlowLoss", "NUM_TRAIN_TIMESTEPS", "S2VBatch", "StepStats", "TrainConfig", "accumulate_gradients",
           "batch_forward", "compute_autocast", "draw_noise_and_time", "scale_gradients",
           "flow_matching_loss", "make_optimizer", "sample_generator", "shift_timestep", "synthetic_batch",
           "train_step"]
