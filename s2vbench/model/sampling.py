"""Sampling one clip in latent space: flow-matching UniPC (bh2, data prediction) with classifier-free guidance.

The schedule is the official one: ``sigma = linspace(sigma_max, 0, steps + 1)[:-1]`` with sigma_max the
float32 value of 0.999, shifted as ``s sigma / (1 + (s - 1) sigma)``, timesteps ``int(1000 sigma)``, and a
final sigma of 0. The solver keeps its coefficients in float64 (the official code uses float32 scalars).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from .flow import NUM_TRAIN_TIMESTEPS, shift_timestep


def unipc_schedule(steps: int, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(sigmas float64 [steps + 1] ending in 0, timesteps int64 [steps])."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if not shift > 0:
        raise ValueError(f"shift must be positive, got {shift}")
    sigma_max = float(np.float32(1.0 - 1.0 / num_train_timesteps))  # the official schedule stores it in float32
    sigmas = shift_timestep(np.linspace(sigma_max, 0.0, steps + 1)[:-1], shift)
    timesteps = (sigmas * num_train_timesteps).astype(np.int64)
    return np.append(sigmas, 0.0), timesteps


def _lambda(sigma: float) -> float:
    """Half log-SNR of the flow path x = (1 - sigma) x0 + sigma eps: log(alpha / sigma)."""
    return math.inf if sigma == 0 else math.log(1.0 - sigma) - math.log(sigma)


class FlowUniPCSolver:
    """Multistep UniPC predictor-corrector (B(h) = e^h - 1, i.e. bh2) on x0 predictions of a flow model.

    Call :meth:`step` once per timestep with the model's velocity at the current sample. The order ramps up
    from 1 (one history point) and drops to 1 on the last step, as the official scheduler does."""

    def __init__(self, steps: int = 40, shift: float = 3.0, order: int = 2,
                 num_train_timesteps: int = NUM_TRAIN_TIMESTEPS):
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order}")
        self.order = order
        sigmas, timesteps = unipc_schedule(steps, shift, num_train_timesteps)
        self.sigmas = sigmas.tolist()
        self.timesteps = torch.from_numpy(timesteps)
        self.steps = steps
        self._index = 0
        self._history: list[torch.Tensor] = []      # x0 predictions, newest last
        self._last_sample: torch.Tensor | None = None
        self._last_order = 0

    def _predict(self, x: torch.Tensor, k: int, order: int) -> torch.Tensor:
        """UniP from sigma_k to sigma_{k+1}."""
        s0, t = self.sigmas[k], self.sigmas[k + 1]
        m0 = self._history[-1]
        h = _lambda(t) - _lambda(s0)
        phi = math.expm1(-h)           # B(h) of bh2 equals h*phi_1(h) here
        out = (t / s0) * x - (1 - t) * phi * m0
        if order == 2:
            rk = (_lambda(self.sigmas[k - 1]) - _lambda(s0)) / h
            out = out - (1 - t) * phi * 0.5 * (self._history[-2] - m0) / rk
        return out

    def _correct(self, x_prev: torch.Tensor, x: torch.Tensor, model_t: torch.Tensor, k: int, order: int
                 ) -> torch.Tensor:
        """UniC: refine the sample at sigma_k using the new x0 prediction ``model_t``."""
        s0, t = self.sigmas[k - 1], self.sigmas[k]
        m0 = self._history[-1]
        h = _lambda(t) - _lambda(s0)
        hh = -h
        phi = math.expm1(hh)
        base = (t / s0) * x_prev - (1 - t) * phi * m0
        d1_t = model_t - m0
        if order == 1:
            return base - (1 - t) * phi * 0.5 * d1_t
        rk = (_lambda(self.sigmas[k - 2]) - _lambda(s0)) / h
        # Solve [[1, 1], [rk, 1]] rho = b with b_i = i! * h_phi_i / B(h) (UniC-2 weights).
        hphi_1 = phi / hh - 1
        b1 = hphi_1 / phi
        b2 = (hphi_1 / hh - 0.5) * 2 / phi
        rho_d1 = (b1 - b2) / (1 - rk)
        rho_t = b1 - rho_d1
        d1 = (self._history[-2] - m0) / rk
        return base - (1 - t) * phi * (rho_d1 * d1 + rho_t * d1_t)

    def step(self, velocity: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
        """Advance ``sample`` from sigma_k to sigma_{k+1} given the model's velocity at sigma_k."""
        k = self._index
        if k >= self.steps:
            raise RuntimeError(f"the solver has already taken all {self.steps} steps")
        x0 = sample - self.sigmas[k] * velocity
        if k > 0:
            sample = self._correct(self._last_sample, sample, x0, k, self._last_order)
        self._history = (self._history + [x0])[-self.order:]
        order = min(self.order, self.steps - k, k + 1)
        self._last_sample = sample
        self._last_order = order
        self._index += 1
        return self._predict(sample, k, order).to(sample.dtype)


@dataclass
class ClipConditions:
    """The conditioning inputs of one clip (see :meth:`s2vbench.model.WanS2V.forward`)."""

    context: torch.Tensor
    """[B, L, text_dim] prompt embedding."""
    ref_latents: torch.Tensor
    """[B, in_dim, 1, h, w] reference image."""
    audio_input: torch.Tensor
    """[B, 25, audio_dim, 4F] audio features of this clip."""
    motion_latents: torch.Tensor | None = None
    """[B, in_dim, 19, h, w] motion history, or None for the first clip."""
    cond_states: torch.Tensor | None = None
    """[B, cond_dim, F, h, w] pose latent, or None."""

    def unconditional(self, negative_context: torch.Tensor) -> "ClipConditions":
        """The CFG branch: negative prompt and silent (zeroed) audio; ref, motion and pose unchanged."""
        return replace(self, context=negative_context, audio_input=self.audio_input * 0)


@torch.no_grad()
def sample_clip(model: torch.nn.Module, noise: torch.Tensor, cond: ClipConditions, negative_context: torch.Tensor,
                guide_scale: float = 4.5, steps: int = 40, shift: float = 3.0, dtype: torch.dtype | None = None
                ) -> torch.Tensor:
    """Denoise ``noise`` [B, in_dim, F, h, w] into a clip latent with UniPC and CFG ``u + g (c - u)``.

    Two model forwards per step when ``guide_scale > 1``; ``dtype=torch.bfloat16`` runs them under autocast."""
    solver = FlowUniPCSolver(steps, shift)
    uncond = cond.unconditional(negative_context) if guide_scale > 1 else None
    latents = noise
    device_type = noise.device.type
    for t in solver.timesteps:
        tt = t.expand(noise.shape[0]).to(noise.device)
        with torch.autocast(device_type=device_type, dtype=dtype or torch.float32, enabled=dtype is not None):
            v = model(latents, tt, **vars(cond)).float()
            if uncond is not None:
                v_u = model(latents, tt, **vars(uncond)).float()
                v = v_u + guide_scale * (v - v_u)
        latents = solver.step(v.to(latents.dtype), latents)
    return latents


__all__ = ["ClipConditions", "FlowUniPCSolver", "sample_clip", "unipc_schedule"]
