"""The Triton attention kernels against float64 torch (flash-attention's rule: at most ~2x torch's own error
in the same dtype). Without a GPU they run in the Triton interpreter in float32; on a GPU, bf16 and fp16 too."""


import pytest
import torch

from conftest import DEVICE, ON_GPU, rel_err

ka = pytest.importorskip("s2vbench.kernels.attention")

DTYPES = [torch.float32] + ([torch.bfloat16, torch.float16] if ON_GPU else [])
# (B, Nq, Nk, H, D, kv_lens)
CASES = [
    (1, 64, 64, 2, 16, None),
    (2, 70, 45, 2, 32, [45, 17]),   # Nq != Nk, ragged lengths, a masked tail
    (1, 33, 97, 1, 64, [60]),       # N not a multiple of the block
    (2, 40, 40, 1, 24, [40, 0]),    # head_dim not a power of two; an item with every key masked
    (1, 20, 5, 2, 128, None),       # 5 keys, as audio cross-attention has
]


def make(case, dtype, seed=0):
    b, nq, nk, h, d, lens = case
    g = torch.Generator().manual_seed(seed)
    q, k, v, do = (torch.randn(shape, generator=g) for shape in ((b, nq, h, d), (b, nk, h, d), (b, nk, h, d),
                                                                 (b, nq, h, d)))
    lens = None if lens is None else torch.tensor(lens)
    to = dict(device=DEVICE, dtype=dtype)
    return q.to(**to), k.to(**to), v.to(**to), do.to(**to), None if lens is None else lens.to(DEVICE)


def poisoned(like, dtype=None):
    return torch.full_like(like, float("nan"), dtype=dtype or like.dtype)


def within_rule(ours, torch_same_dtype, truth, what):
    """flash-attention's rule: our error vs float64 at most 2x torch's error in the same dtype (+ a floor)."""
    ref_err = (torch_same_dtype.double() - truth).abs().max().item()
    our_err = (ours.double() - truth).abs().max().item()
    floor = 1e-6 * max(1.0, truth.abs().max().item())
    assert our_err <= 2 * ref_err + floor, f"{what}: error {our_err:.3g} vs torch {ref_err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"-lens{c[5]}")
def test_forward_and_backward_against_float64(case, dtype):
    q, k, v, do, lens = make(case, dtype)
    out, lse = ka.attention_forward(q, k, v, lens, out=poisoned(q), lse=poisoned(q[..., 0].transpose(1, 2),
                                                                                   torch.float32).contiguous())
    q64, k64, v64, do64 = (t.double() for t in (q, k, v, do))
    out64, lse64 = ka.attention_reference(q64, k64, v64, lens)
    out_t, lse_t = ka.attention_reference(q, k, v, lens)
    assert not out.isnan().any() and not lse.isnan().any()
    within_rule(out, out_t, out64, "out")
    finite = torch.isfinite(lse64)
    assert torch.equal(torch.isfinite(lse), finite)
    within_rule(lse[finite], lse_t[finite], lse64[finite], "lse")
    dq, dk, dv = ka.attention_backward(do, q, k, v, out, lse, lens, dq=poisoned(q), dk=poisoned(k), dv=poisoned(v))
    truth = ka.attention_backward_reference(do64, q64, k64, v64, out64, lse64, lens)
    same = ka.attention_backward_reference(do, q, k, v, out_t, lse_t, lens)
    for name, ours, t_same, t64 in zip(("dq", "dk", "dv"), (dq, dk, dv), same, truth):
        assert not ours.isnan().any(), name
        within_rule(ours, t_same, t64, name)


def test_all_masked_gives_zero_output_minus_inf_lse_and_no_nan():
    q, k, v, do, _ = make((1, 20, 30, 2, 16, None), torch.float32)
    lens = torch.tensor([0], device=DEVICE)
    out, lse = ka.attention_forward(q, k, v, lens)
    assert torch.equal(out, torch.zeros_like(out)) and torch.all(lse == float("-inf"))
    dq, dk, dv = ka.attention_backward(do, q, k, v, out, lse, lens)
    assert all(torch.equal(g, torch.zeros_like(g)) for g in (dq, dk, dv))


def test_three_way_key_split_merges_to_the_unsplit_result():
    q, k, v, do, _ = make((2, 48, 90, 2, 32, None), torch.float32, seed=1)
    lens = torch.tensor([90, 50], device=DEVICE)
    full_out, full_lse = ka.attention_forward(q, k, v, lens)
    bounds = [0, 30, 60, 90]  # item 1 (50 valid keys) has a block with no valid key at all
    parts = []
    for a, b in zip(bounds, bounds[1:]):
        chunk_lens = (lens - a).clamp(0, b - a)
        parts.append(ka.attention_forward(q, k[:, a:b], v[:, a:b], chunk_lens) + (chunk_lens,))
    assert torch.all(parts[2][1][1] == float("-inf"))
    out, lse = parts[0][0], parts[0][1]
    for o, l, _ in parts[1:]:
        out, lse = ka.merge_attention(out, lse, o, l)
    assert not out.isnan().any()
    assert rel_err(out, full_out) < 1e-6 and rel_err(lse, full_lse) < 1e-6
    # The backward of each block with the merged global statistics reassembles the full gradients.
    full = ka.attention_backward(do, q, k, v, full_out, full_lse, lens)
    dq = torch.zeros_like(q)
    dks, dvs = [], []
    for (a, b), (_, _, chunk_lens) in zip(zip(bounds, bounds[1:]), parts):
        gq, gk, gv = ka.attention_backward(do, q, k[:, a:b], v[:, a:b], out.to(q.dtype), lse, chunk_lens)
        dq += gq
        dks.append(gk)
        dvs.append(gv)
    assert rel_err(dq, full[0]) < 1e-5
    assert rel_err(torch.cat(dks, 1), full[1]) < 1e-5 and rel_err(torch.cat(dvs, 1), full[2]) < 1e-5


def test_merge_handles_two_empty_parts():
    out = torch.randn(1, 3, 2, 4)
    ninf = torch.full((1, 2, 3), float("-inf"))
    o, l = ka.merge_attention(out, ninf, out, ninf)
    assert torch.equal(o, torch.zeros_like(o)) and torch.all(l == float("-inf"))
    o, l = ka.merge_attention(out, torch.zeros(1, 2, 3), 2 * out, ninf)
    assert torch.equal(o, out) and torch.equal(l, torch.zeros(1, 2, 3))


@pytest.mark.parametrize("variant", ["tma", "tma_ws"])
def test_hopper_variants_match_the_pointer_kernel(variant):
    q, k, v, _, lens = make((2, 70, 45, 2, 32, [45, 17]), torch.float32)
    ref = ka.attention_forward(q, k, v, lens)
    out, lse = ka.attention_forward(q, k, v, lens, variant=variant, lse=poisoned(ref[1]))
    assert rel_err(out, ref[0]) < 1e-6 and torch.equal(torch.isfinite(lse), torch.isfinite(ref[1]))
    with pytest.raises(ValueError, match="power-of-two head_dim"):
        ka.attention_forward(*make((1, 16, 16, 1, 24, None), torch.float32)[:3], variant=variant)


def test_autograd_op_with_lse_gradient_against_float64_autograd():
    q, k, v, _, lens = make((2, 40, 36, 2, 16, [36, 20]), torch.float32, seed=2)
    wo, wl = torch.randn_like(q), torch.randn(2, 2, 40, device=DEVICE)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out, lse = ka.flash_attention_with_lse(*leaves, lens)
    ((out * wo).sum() + (lse * wl).sum()).backward()
    ref_leaves = [t.double().requires_grad_() for t in (q, k, v)]
    out64, lse64 = ka.attention_reference(*ref_leaves, lens)
    ((out64 * wo.double()).sum() + (lse64 * wl.double()).sum()).backward()
    for ours, ref in zip(leaves, ref_leaves):
        assert rel_err(ours.grad, ref.grad) < 1e-5


def test_fake_implementation_traces_on_meta_and_under_compile():
    q = torch.empty(2, 10, 3, 16, device="meta")
    k = torch.empty(2, 7, 3, 16, device="meta")
    out, lse = ka.flash_attention_with_lse(q, k, k)
    assert out.shape == q.shape and lse.shape == (2, 3, 10) and lse.dtype == torch.float32
    qq, kk, vv, _, _ = make((1, 16, 16, 1, 16, None), torch.float32)
    fn = torch.compile(lambda a, b, c: ka.flash_attention(a, b, c) * 2, backend="aot_eager", fullgraph=True)
    assert rel_err(fn(qq, kk, vv), 2 * ka.attention_forward(qq, kk, vv)[0]) < 1e-6


def test_clear_errors(monkeypatch):
    q, k, v, _, _ = make((1, 16, 16, 1, 16, None), torch.float32)
    with pytest.raises(ValueError, match="head_dim 8 is outside"):
        ka.attention_forward(q[..., :8], k[..., :8], v[..., :8])
    with pytest.raises(ValueError, match="must share one of"):
        ka.attention_forward(q, k.double(), v)
    with pytest.raises(ValueError, match="unknown attention variant"):
        ka.attention_forward(q, k, v, variant="wgmma")
    if not ON_GPU:
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(RuntimeError, match="need a CUDA device"):
            ka.attention_forward(q, k, v)


def test_model_fixture_with_the_triton_backend(shared):
    from safetensors.torch import load_file

    from s2vbench.model import WanS2V, get_preset, load_checkpoint

    fx = shared / "fixtures" / "wan_s2v_tiny"
    model = WanS2V(get_preset("tiny").model).eval()
    load_checkpoint(model, fx / "weights.safetensors")
    for m in model.modules():
        if hasattr(m, "attn_backend"):
            m.attn_backend = "triton"
    T = load_file(str(fx / "tensors.safetensors"))
    with torch.no_grad():
        out = model(T["x"][None], T["t"], T["context"][None], T["ref_latents"], T["audio_input"],
                    T["motion_latents"], T["cond_states"])
    assert rel_err(out[0], T["out.motion"]) <= 1e-5
