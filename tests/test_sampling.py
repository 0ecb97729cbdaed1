"""UniPC flow sampling: the schedule, convergence order on an exactly solvable flow, and CFG wiring."""

import math

import numpy as np
import pytest
import torch

from s2vbench.model import WanS2V, get_preset
from s2vbench.model.flow import synthetic_batch
from s2vbench.model.sampling import ClipConditions, FlowUniPCSolver, sample_clip, unipc_schedule


def test_schedule_matches_the_spec_formula():
    sigmas, timesteps = unipc_schedule(40, 3.0)
    s = np.linspace(0.999, 0, 41)[:-1]
    s = 3 * s / (1 + 2 * s)
    assert np.allclose(sigmas[:-1], s, rtol=0, atol=1e-7) and sigmas[-1] == 0
    assert np.array_equal(timesteps, (s * 1000).astype(np.int64))
    assert timesteps[0] == 999 and timesteps[-1] == 71 and len(timesteps) == 40


def gaussian_flow(mu: float, s: float):
    """Data x0 ~ N(mu, s^2): velocity E[eps - x0 | x_sigma] and the exact ODE map between noise levels."""
    def std(sig):
        return math.sqrt(sig ** 2 + (1 - sig) ** 2 * s ** 2)

    def velocity(x, sig):
        return (sig - (1 - sig) * s * s) / std(sig) ** 2 * (x - (1 - sig) * mu) - mu

    def exact(x, sig_from, sig_to):
        return (1 - sig_to) * mu + std(sig_to) / std(sig_from) * (x - (1 - sig_from) * mu)

    return velocity, exact


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_solver_converges_at_second_order(shift):
    velocity, exact = gaussian_flow(mu=1.0, s=2.0)
    x_start = torch.linspace(-3, 3, 61, dtype=torch.float64)
    errors = []
    for n in (40, 80, 160, 320):
        solver = FlowUniPCSolver(n, shift)
        x = x_start.clone()
        for k in range(n):
            x = solver.step(velocity(x, solver.sigmas[k]), x)
        errors.append(float((x - exact(x_start, solver.sigmas[0], 0.0)).abs().max()))
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(r > 3.5 for r in ratios), (errors, ratios)  # ~4 per doubling: second order
    assert errors[-1] < 5e-4


def test_solver_refuses_extra_steps():
    solver = FlowUniPCSolver(2, 3.0)
    x = torch.zeros(3)
    for _ in range(2):
        x = solver.step(torch.ones(3), x)
    with pytest.raises(RuntimeError, match="all 2 steps"):
        solver.step(torch.ones(3), x)


def test_cfg_uses_negative_prompt_and_silent_audio():
    tiny = get_preset("tiny")
    torch.manual_seed(0)
    model = WanS2V(tiny.model).eval()
    b = synthetic_batch(tiny.model, tiny.clip)
    cond = ClipConditions(b.context, b.ref_latents, b.audio_input, b.motion_latents, b.cond_states)
    negative = torch.randn_like(b.context)
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, x, t, context, ref_latents, audio_input, motion_latents, cond_states):
            seen.append((t.clone(), context, audio_input))
            return model(x, t, context, ref_latents, audio_input, motion_latents, cond_states)

    noise = torch.randn_like(b.latents)
    out = sample_clip(Recorder(), noise, cond, negative, guide_scale=4.5, steps=3)
    assert out.shape == noise.shape and torch.isfinite(out).all()
    assert len(seen) == 6  # two forwards per step
    for i, (t, ctx, audio) in enumerate(seen):
        if i % 2 == 0:
            assert ctx is b.context and audio is b.audio_input
        else:
            assert ctx is negative and not audio.any() and audio.shape == b.audio_input.shape
    steps = [int(t) for t, _, _ in seen[::2]]
    assert steps == unipc_schedule(3, 3.0)[1].tolist()
    # guide_scale 1 runs the conditional branch only
    seen.clear()
    sample_clip(Recorder(), noise, cond, negative, guide_scale=1.0, steps=2)
    assert len(seen) == 2
