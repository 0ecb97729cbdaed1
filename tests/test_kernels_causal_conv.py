"""The fused causal conv + LayerNorm + SiLU kernel against float64 torch, and inside the model."""

import pytest
import torch

from conftest import DEVICE, ON_GPU, rel_err
from s2vbench.kernels.causal_conv import causal_conv_ln_silu_reference

op = pytest.importorskip("s2vbench.kernels.causal_conv.triton_op")

DTYPES = [torch.float32] + ([torch.bfloat16] if ON_GPU else [])


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    """Every buffer the kernels write starts as NaN, so an element never written fails the test."""
    def nan_empty(*shape, device, dtype):
        return torch.full(shape, float("nan"), device=device, dtype=dtype)

    monkeypatch.setattr(op, "_empty", nan_empty)


# (B, C_in, C_out, T, stride, groups): both strides, odd lengths, grouped norms, the model's T = 153
CASES = [(2, 24, 48, 37, 1, 1), (1, 32, 64, 153, 2, 1), (2, 20, 64, 31, 1, 4), (1, 16, 40, 7, 2, 2),
         (1, 8, 16, 1, 2, 1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_outputs_and_gradients_against_float64(case, dtype):
    b, ci, co, t, stride, groups = case
    g = torch.Generator().manual_seed(0)
    x, w, bias = torch.randn(b, ci, t, generator=g), torch.randn(co, ci, 3, generator=g) * 0.2, torch.randn(co, generator=g)
    leaves = [v.to(DEVICE, dtype).requires_grad_() for v in (x, w, bias)]
    y = op.causal_conv_ln_silu(*leaves, stride, groups)
    assert y.shape == (b, -(-t // stride), co) and not y.isnan().any()
    dy = torch.randn(y.shape, generator=g).to(DEVICE, dtype)
    grads = torch.autograd.grad(y, leaves, dy)
    truth = [v.double().to(DEVICE).requires_grad_() for v in (x, w, bias)]
    y64 = causal_conv_ln_silu_reference(*truth, stride, groups)
    grads64 = torch.autograd.grad(y64, truth, dy.double())
    same = [v.detach().clone().requires_grad_() for v in leaves]
    y_t = causal_conv_ln_silu_reference(*same, stride, groups)
    grads_t = torch.autograd.grad(y_t, same, dy)
    for name, ours, t_same, t64 in zip(("y", "dx", "dw", "db"), (y, *grads), (y_t, *grads_t), (y64, *grads64)):
        assert not ours.isnan().any(), name
        ref_err = (t_same.double() - t64).abs().max().item()
        err = (ours.double() - t64).abs().max().item()
        assert err <= 2 * ref_err + 1e-6 * max(1.0, t64.abs().max().item()), (name, err, ref_err)


def test_errors():
    x = torch.randn(1, 4, 9, device=DEVICE)
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        op.causal_conv_ln_silu(x, torch.randn(8, 4, 3, device=DEVICE), None, 3)
    with pytest.raises(ValueError, match="not divisible into 3"):
        op.causal_conv_ln_silu(x, torch.randn(8, 4, 3, device=DEVICE), None, 1, groups=3)
    with pytest.raises(ValueError, match="expected x"):
        op.causal_conv_ln_silu(x, torch.randn(8, 5, 3, device=DEVICE), None, 1)


def test_model_audio_encoder_selects_the_kernel_and_matches_its_torch_path():
    from s2vbench.model import WanS2V, get_preset

    torch.manual_seed(0)
    model = WanS2V(get_preset("tiny").model).to(DEVICE)
    enc = model.casual_audio_encoder
    feats = torch.randn(1, 25, 32, 16 + 73, device=DEVICE)
    outs, grads = [], []
    for backend in ("torch", "triton"):
        enc.encoder.conv_backend = backend
        enc.zero_grad()
        local, glob = enc(feats)
        (local.square().sum() + glob.sum()).backward()
        outs.append((local, glob))
        grads.append(enc.encoder.conv2.conv.weight.grad.clone())
    assert rel_err(outs[1][0], outs[0][0]) < 1e-5 and rel_err(outs[1][1], outs[0][1]) < 1e-5
    assert rel_err(grads[1], grads[0]) < 1e-5
    enc.encoder.conv_backend = "cudnn"
    with pytest.raises(ValueError, match="unknown conv backend 'cudnn'"):
        enc(feats)
