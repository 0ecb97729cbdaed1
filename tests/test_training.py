"""Flow-matching training: RNG discipline, the loss decreases, gradients match finite differences."""

import pytest
import torch

from s2vbench.model import WanS2V, get_preset
from s2vbench.model.flow import (TrainConfig, draw_noise_and_time, flow_matching_loss, make_optimizer, shift_timestep,
                                 synthetic_batch, train_step)

TINY = get_preset("tiny")


def test_draws_depend_only_on_seed_step_and_sample():
    a = draw_noise_and_time((2, 3), seed=1, step=5, sample_index=7, shift=3.0)
    torch.manual_seed(123)  # global RNG state must not matter
    b = draw_noise_and_time((2, 3), seed=1, step=5, sample_index=7, shift=3.0)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    for other in [(2, 5, 7), (1, 6, 7), (1, 5, 8)]:
        c = draw_noise_and_time((2, 3), *other, shift=3.0)
        assert not torch.equal(a[0], c[0])


def test_timestep_shift():
    u = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    assert torch.allclose(shift_timestep(u, 3.0), 3 * u / (1 + 2 * u))
    assert torch.equal(shift_timestep(u, 1.0), u)


def test_loss_is_sum_over_noisy_tokens():
    torch.manual_seed(0)
    model = WanS2V(TINY.model)
    batch = synthetic_batch(TINY.model, TINY.clip, batch_size=2)
    loss = flow_matching_loss(model, batch, seed=0, step=0)
    assert loss.num_tokens == 2 * 4 * 8 * 8 and loss.elements_per_token == 64
    # zero-initialised head: prediction 0, so the loss is |eps - x0|^2 summed
    noise = torch.stack([draw_noise_and_time((16, 4, 16, 16), 0, 0, i, 3.0)[0] for i in range(2)])
    assert torch.allclose(loss.loss_sum, (noise - batch.latents).pow(2).sum(), rtol=1e-5)


def test_the_loss_scores_the_velocity_at_the_noised_latents_and_the_step_follows_its_mean():
    # By hand: x_t = t eps + (1 - t) x0 fed at timestep 1000 t, target eps - x0, the mean over every predicted
    # value; a plain SGD step of lr 1 then moves each parameter by exactly that mean's gradient. (With the
    # zero-initialised head, the loss above cannot see x_t, the timestep scale or the target's sign.)
    torch.manual_seed(0)
    model = WanS2V(TINY.model)
    with torch.no_grad():
        model.head.head.weight.normal_(std=0.1)
    batch = synthetic_batch(TINY.model, TINY.clip, batch_size=2)
    x0, step = batch.latents, 3
    draws = [draw_noise_and_time(tuple(x0.shape[1:]), 0, step, int(i), 3.0) for i in batch.sample_index]
    eps = torch.stack([d[0] for d in draws])
    t = torch.stack([d[1] for d in draws]).float()
    assert len(set(t.tolist())) == 2, "two samples, two timesteps"
    tb = t.view(-1, 1, 1, 1, 1)
    v = model(tb * eps + (1 - tb) * x0, 1000 * t, batch.context, batch.ref_latents, batch.audio_input,
              batch.motion_latents, batch.cond_states)
    expected = (v - (eps - x0)).pow(2).mean()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(expected, params)
    assert flow_matching_loss(model, batch, seed=0, step=step).mean.item() == pytest.approx(expected.item(),
                                                                                              rel=1e-5)
    before = [p.detach().clone() for p in params]
    stats = train_step(model, torch.optim.SGD(params, lr=1.0), batch, step=step, cfg=TrainConfig(seed=0))
    assert stats.loss == pytest.approx(expected.item(), rel=1e-5)
    for p, b, g in zip(params, before, grads):
        torch.testing.assert_close(b - p.detach(), g, rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize("dtype, ac", [("float32", False), ("bfloat16", True)])
def test_training_lowers_the_loss_on_a_fixed_batch(dtype, ac):
    torch.manual_seed(0)
    model = WanS2V(TINY.model)
    cfg = TrainConfig(lr=2e-3, dtype=dtype, activation_checkpointing=ac)
    opt = make_optimizer(model, cfg)
    batch = synthetic_batch(TINY.model, TINY.clip, batch_size=1)
    losses = [train_step(model, opt, batch, step=0, cfg=cfg).loss for _ in range(8)]  # same draw every step
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.95 * losses[0], losses
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = WanS2V(TINY.model)
    with torch.no_grad():  # make every block matter for the gradient
        model.head.head.weight.normal_(std=0.1)
    batch = synthetic_batch(TINY.model, TINY.clip)
    grads = []
    for ac in (False, True):
        model.zero_grad()
        model.activation_checkpointing = ac
        flow_matching_loss(model, batch, 0, 0).loss_sum.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6), n


def test_gradients_match_float64_finite_differences():
    torch.manual_seed(0)
    cfg = TINY.model.replace(num_layers=2, audio_inject_layers=(1,))
    model = WanS2V(cfg).double()
    with torch.no_grad():  # break the zero-init symmetry so every checked parameter has a gradient
        for name, p in model.named_parameters():
            if p.abs().max() == 0:
                p.normal_(std=0.05)
    clip = TINY.clip
    batch = synthetic_batch(cfg, type(clip)(2, 16, 16, 6))
    batch = batch.__class__(**{k: (v.double() if torch.is_floating_point(v) else v)
                               if isinstance(v, torch.Tensor) else v for k, v in vars(batch).items()})

    def loss() -> torch.Tensor:
        return flow_matching_loss(model, batch, seed=3, step=1).mean

    model.zero_grad()
    loss().backward()
    params = dict(model.named_parameters())
    checked = ["blocks.0.self_attn.q.weight", "blocks.1.ffn.2.bias", "audio_injector.injector.0.o.weight",
               "audio_injector.injector_adain_layers.0.linear.weight", "casual_audio_encoder.weights",
               "casual_audio_encoder.encoder.conv2.conv.weight", "frame_packer.proj_4x.weight",
               "trainable_cond_mask.weight", "cond_encoder.weight", "time_projection.1.weight",
               "text_embedding.0.weight", "head.modulation", "blocks.0.modulation"]
    g = torch.Generator().manual_seed(0)
    for name in checked:
        p = params[name]
        for _ in range(2):
            idx = tuple(int(torch.randint(s, (1,), generator=g)) for s in p.shape)
            orig = p.data[idx].item()
            h = 1e-6
            with torch.no_grad():
                p.data[idx] = orig + h
                up = loss().item()
                p.data[idx] = orig - h
                down = loss().item()
                p.data[idx] = orig
            fd = (up - down) / (2 * h)
            ad = p.grad[idx].item()
            assert abs(fd - ad) <= 1e-6 + 1e-4 * abs(fd), (name, idx, fd, ad)


def test_train_config_errors():
    with pytest.raises(ValueError, match="TrainConfig.dtype='fp8'"):
        TrainConfig(dtype="fp8")


def test_gradient_accumulation_equals_the_whole_batch():
    from s2vbench.model.flow import S2VBatch

    batch = synthetic_batch(TINY.model, TINY.clip, batch_size=3)
    batch = S2VBatch(**{k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                        for k, v in vars(batch).items()})
    micro = [S2VBatch(**{k: (v[i:j] if isinstance(v, torch.Tensor) else v) for k, v in vars(batch).items()})
             for i, j in ((0, 1), (1, 3))]  # unequal micro-batches
    params, losses = [], []
    for b in (batch, micro):
        torch.manual_seed(0)
        model = WanS2V(TINY.model).double()
        cfg = TrainConfig(lr=1e-3)
        opt = make_optimizer(model, cfg)
        losses.append(train_step(model, opt, b, step=0, cfg=cfg).loss)
        params.append({n: p.detach().clone() for n, p in model.named_parameters()})
    assert abs(losses[0] - losses[1]) < 1e-12
    for n in params[0]:
        assert torch.allclose(params[0][n], params[1][n], rtol=1e-10, atol=1e-12), n
