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


def test_cfg_combines_the_branches_as_u_plus_g_times_c_minus_u(monkeypatch):
    # a stub model: constant velocity c for the conditional branch, u for the unconditional one
    from s2vbench.model import sampling

    context, negative = torch.zeros(1, 2, 3), torch.ones(1, 2, 3)
    noise = torch.linspace(-1, 1, 2 * 4, dtype=torch.float64).reshape(1, 2, 1, 2, 2)
    c_val, u_val, g = 0.75, -0.25, 4.5

    def stub(x, t, context, ref_latents, audio_input, motion_latents, cond_states):
        if context is negative:
            assert not audio_input.any()
            return torch.full_like(x, u_val)
        assert context is cond.context and audio_input.all()
        return torch.full_like(x, c_val)

    cond = ClipConditions(context, torch.zeros(1, 2, 1, 2, 2), torch.ones(1, 25, 4, 4))
    used = []

    class Recording(sampling.FlowUniPCSolver):
        def step(self, velocity, sample):
            used.append(velocity.clone())
            return super().step(velocity, sample)

    monkeypatch.setattr(sampling, "FlowUniPCSolver", Recording)
    want = u_val + g * (c_val - u_val)  # 4.25; the conditional-based v + g (v - u) would give 5.25
    out = sample_clip(stub, noise, cond, negative, guide_scale=g, steps=2)
    assert len(used) == 2
    for v in used:
        assert torch.equal(v, torch.full_like(noise, want))
    # one step lands on sigma 0 at the x0 prediction: x - sigma_0 v
    out = sample_clip(stub, noise, cond, negative, guide_scale=g, steps=1)
    sigma0 = unipc_schedule(1, 3.0)[0][0]
    assert torch.allclose(out, noise - sigma0 * want, rtol=0, atol=1e-12)


def _reference_unipc(steps, shift, x, velocity, solver_order=2):
    """The official FlowUniPCMultistepScheduler (bh2, predict_x0, lower_order_final) written out in float64
    numpy from its formulas: x0 = x - sigma v; predictor x_t = (sigma_t/sigma_s) x - alpha_t (e^-h - 1) m0
    - alpha_t B(h) sum rho_p D1; corrector the same from the previous sample with the new x0, rho_c = [0.5] at
    order 1, else solve R rho = b with R_ij = rk_j^i, b_i = i! h phi_{i+1}(h) / B(h)."""
    sig = np.linspace(float(np.float32(0.999)), 0.0, steps + 1)[:-1]
    sig = np.append(shift * sig / (1 + (shift - 1) * sig), 0.0)
    lam = [math.log(1 - s) - math.log(s) if s > 0 else math.inf for s in sig]

    def update(x_s, k_s, k_t, outs, model_t=None, order=1):
        # from sigma[k_s] to sigma[k_t]; outs[-1] is the x0 at k_s, outs[-1 - i] the one at k_s - i
        h = lam[k_t] - lam[k_s]
        hh = -h
        h_phi_1 = math.expm1(hh)
        b_h = math.expm1(hh)
        m0 = outs[-1]
        rks, d1s = [], []
        for i in range(1, order):
            rk = (lam[k_s - i] - lam[k_s]) / h
            rks.append(rk)
            d1s.append((outs[-1 - i] - m0) / rk)
        rks.append(1.0)
        base = sig[k_t] / sig[k_s] * x_s - (1 - sig[k_t]) * h_phi_1 * m0
        if model_t is None:  # predictor
            res = 0.5 * d1s[0] if order == 2 else 0.0
            return base - (1 - sig[k_t]) * b_h * res
        rhos = [0.5]
        if order > 1:
            R, b, fact, h_phi_k = [], [], 1, h_phi_1 / hh - 1
            for i in range(1, order + 1):
                R.append([r ** (i - 1) for r in rks])
                b.append(h_phi_k * fact / b_h)
                fact *= i + 1
                h_phi_k = h_phi_k / hh - 1 / fact
            rhos = np.linalg.solve(np.array(R), np.array(b)).tolist()
        res = sum(r * d for r, d in zip(rhos[:-1], d1s)) + rhos[-1] * (model_t - m0)
        return base - (1 - sig[k_t]) * b_h * res

    outs, samples, last, last_order, lower = [], [], None, 0, 0
    for k in range(steps):
        m = x - sig[k] * velocity(x, sig[k])
        if k > 0:
            x = update(last, k - 1, k, outs, model_t=m, order=last_order)
        outs.append(m)
        order = min(solver_order, steps - k, lower + 1)
        lower += 1
        last, last_order = x, order
        x = update(x, k, k + 1, outs, order=order)
        samples.append(x)
    return samples


@pytest.mark.parametrize("steps", [2, 3, 4])
def test_solver_steps_match_the_unipc_formulas(steps):
    # covers the order-1 corrector (k = 1), the order-2 predictor and corrector, and the order-1 last step (with
    # 2 steps the corrected sample is multiplied by sigma = 0 on the last step: only 3 and 4 see the corrector)
    def velocity(x, s):
        return 0.7 * x - 0.3 * np.sin(3 * x) + s * np.cos(x)

    x0 = np.linspace(-2.0, 2.0, 9)
    want = _reference_unipc(steps, 3.0, x0.copy(), velocity)
    solver = FlowUniPCSolver(steps, 3.0)
    x = torch.from_numpy(x0.copy())
    for k in range(steps):
        x = solver.step(torch.from_numpy(velocity(x.numpy(), solver.sigmas[k])), x)
        assert x.dtype == torch.float64
        np.testing.assert_allclose(x.numpy(), want[k], rtol=1e-12, atol=1e-12, err_msg=f"step {k}")


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
def test_schedule_starts_at_the_float32_sigma_max_shifted(shift):
    s = float(np.float32(0.999))  # 0.99900001287..., the official schedule's float32 sigma_max
    sigmas, timesteps = unipc_schedule(12, shift)
    assert sigmas[0] == shift * s / (1 + (shift - 1) * s)
    assert sigmas[0] != shift * 0.999 / (1 + (shift - 1) * 0.999)  # the float64 0.999 is a different start
    assert timesteps[0] == int(1000 * sigmas[0])
