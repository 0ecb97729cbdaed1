"""Config validation, input validation, the sequence layout, RoPE and the attention seam."""

import math

import pytest
import torch

from s2vbench.model import (ConfigError, InputError, WanS2V, attention, attention_backends, get_preset,
                            clip_layout, register_attention_backend, sequence_layout)
from s2vbench.model.flow import synthetic_batch
from s2vbench.model.rope import apply_rope, rope_cos_sin
from s2vbench.model.sequence import rope_positions

TINY = get_preset("tiny").model


@pytest.mark.parametrize("change, field, hint", [
    ({"num_heads": 5}, "num_heads", "valid head counts"),
    ({"dim": 0}, "dim", "positive integer"),
    ({"audio_inject_layers": (0, 9)}, "audio_inject_layers", "block index"),
    ({"audio_inject_layers": (2, 0)}, "audio_inject_layers", "ascending"),
    ({"framepack_buckets": (1, 2, 8)}, "framepack_buckets", "official"),
    ({"motion_frames": 81}, "motion_frames", "motion_frames=73"),
    ({"patch_size": (1, 2)}, "patch_size", "three positive"),
    ({"cond_dim": -1}, "cond_dim", "non-negative"),
    ({"freq_dim": 31}, "freq_dim", "even"),
])
def test_bad_config_names_the_field(change, field, hint):
    with pytest.raises(ConfigError, match=rf"WanS2VConfig\.{field}=.*{hint}"):
        TINY.replace(**change)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="choose one of"):
        get_preset("huge")


def test_sequence_table_of_the_spec():
    cfg = get_preset("14b").model
    # (pixel H, W) -> total tokens with motion, infer_frames = 80, from the spec's sequence table
    for (h, w), total in {(704, 1024): 63_360, (960, 704): 59_400, (704, 1280): 79_200, (448, 832): 32_760}.items():
        lay = sequence_layout(cfg, 20, h // 8, w // 8, with_motion=True)
        assert lay.total == total
    lay = sequence_layout(cfg, 20, 88, 128, with_motion=True)
    assert (lay.noisy, lay.ref, lay.motion) == (56_320, 2_816, 2_816 + 704 + 704)
    assert sequence_layout(cfg, 12, 88, 128, with_motion=True).total == 40_832
    assert sequence_layout(cfg, 20, 88, 128, with_motion=False).motion == 0


def test_framepack_rope_positions_of_the_spec():
    lay = sequence_layout(TINY, 4, 16, 16, with_motion=True)
    pos = rope_positions(TINY, lay)
    n, r = lay.noisy, lay.ref
    assert pos[:n, 0].unique().tolist() == [0, 1, 2, 3]
    assert pos[n:n + r, 0].unique().tolist() == [30]
    post, two, four = (pos[n + r:n + r + 64], pos[n + r + 64:n + r + 80], pos[n + r + 80:])
    assert post[:, 0].unique().tolist() == [-1] and post[:, 1].unique().tolist() == list(range(8))
    assert two[:, 0].unique().tolist() == [-3] and two[:, 1].unique().tolist() == [0, 2, 4, 7]
    assert sorted(four[:, 0].unique().tolist()) == [-19, -14, -9, -4] and four[:, 2].unique().tolist() == [0, 7]


def test_rope_table_is_head_free_float64_angles():
    pos = torch.tensor([[3, 5, 7], [-19, 0, 7]])
    cos, sin = rope_cos_sin(pos, head_dim=128)
    assert cos.shape == (2, 64) and cos.dtype == torch.float32
    # t axis gets the first 22 pairs with frequencies theta^(-2i/44)
    want = torch.cos(torch.tensor(-19.0, dtype=torch.float64) / 10000 ** (torch.arange(0, 44, 2, dtype=torch.float64) / 44))
    assert torch.allclose(cos[1, :22].double(), want, atol=1e-7)
    x = torch.randn(1, 2, 3, 128, dtype=torch.float64)
    y = apply_rope(x, cos, sin)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1))  # a rotation


def test_rope_rotates_low_precision_inputs_in_float32():
    # bf16 q/k are rotated in float32 (the official code rotates in float64 and casts back): the result is the
    # float64 rotation of the bf16 values to float32 rounding, not to bf16's
    pos = torch.stack([torch.arange(64) % 4, torch.arange(64) // 8, torch.arange(64) % 8], dim=1)
    cos, sin = rope_cos_sin(pos, head_dim=64)
    x = torch.randn(1, 64, 2, 64).bfloat16()
    y = apply_rope(x, cos, sin)
    assert y.dtype == torch.float32
    a, b = x.double().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos.double()[None, :, None], sin.double()[None, :, None]
    want = torch.stack([a * c - b * s, a * s + b * c], dim=-1).flatten(-2)
    assert (y.double() - want).abs().max() < 1e-5


def test_framepack_left_pads_a_short_history_with_zeros():
    # fewer than 19 motion frames are the most recent ones: zeros stand in for the older frames, not the newer
    from s2vbench.model.framepack import FramePackMotioner

    torch.manual_seed(0)
    fp = FramePackMotioner(in_dim=4, dim=8)
    short = torch.randn(1, 4, 5, 8, 8)
    padded = torch.cat([torch.zeros(1, 4, 14, 8, 8), short], dim=2)
    torch.testing.assert_close(fp(short), fp(padded), rtol=0, atol=0)


def inputs(clip_frames=4, h=16, w=16, audio_frames=None, motion=True):
    b = synthetic_batch(TINY, get_preset("tiny").clip)
    x = torch.randn(1, 16, clip_frames, h, w)
    audio = torch.randn(1, 25, 32, 4 * clip_frames if audio_frames is None else audio_frames)
    return dict(x=x, t=torch.tensor([10]), context=b.context, ref_latents=torch.randn(1, 16, 1, h, w),
                audio_input=audio, motion_latents=torch.randn(1, 16, 19, h, w) if motion else None,
                cond_states=torch.randn(1, 16, clip_frames, h, w))


@pytest.fixture(scope="module")
def model():
    return WanS2V(TINY).eval()


@pytest.mark.parametrize("kw, match", [
    (dict(h=15), "latent height 15 is not a positive multiple of the patch size 2"),
    (dict(w=18), "FramePack's 4x projector needs the latent height and width to be multiples of 8"),
    (dict(audio_frames=12), "audio is too short for the clip; pass 16 frames"),
    (dict(audio_frames=40), "audio is too long"),
])
def test_bad_inputs_raise_clear_errors(model, kw, match):
    with pytest.raises(InputError, match=match):
        model(**inputs(**kw))


def test_more_inputs_errors(model):
    args = inputs()
    args["motion_latents"] = torch.randn(1, 16, 21, 16, 16)
    with pytest.raises(InputError, match="at most 19"):
        model(**args)
    args = inputs()
    args["context"] = torch.randn(1, 17, 48)
    with pytest.raises(InputError, match="text_len=16"):
        model(**args)
    args = inputs()
    args["ref_latents"] = torch.randn(1, 16, 1, 8, 16)
    with pytest.raises(InputError, match="ref_latents must be"):
        model(**args)
    # Without motion, an 18-wide latent is fine (FramePack is not involved), and odd frame counts are fine.
    assert model(**inputs(clip_frames=3, w=18, motion=False)).shape == (1, 16, 3, 16, 18)


def test_no_pose_equals_the_zero_pose_latent(model):
    args = inputs()
    args["cond_states"] = torch.zeros_like(args["cond_states"])
    with torch.no_grad():
        a = model(**args)
        args["cond_states"] = None
        b = model(**args)
    assert torch.allclose(a, b, atol=1e-6)


def test_attention_seam():
    q, k, v = torch.randn(2, 5, 3, 8, dtype=torch.float64), torch.randn(2, 7, 3, 8, dtype=torch.float64), \
        torch.randn(2, 7, 3, 8, dtype=torch.float64)
    lens = torch.tensor([7, 4])
    out = attention(q, k, v, lens)
    ref = []
    for i in range(2):
        s = torch.einsum("qhd,khd->hqk", q[i], k[i, :lens[i]]) / math.sqrt(8)
        ref.append(torch.einsum("hqk,khd->qhd", s.softmax(-1), v[i, :lens[i]]))
    assert torch.allclose(out, torch.stack(ref), atol=1e-12)
    with pytest.raises(ValueError, match="unknown attention backend 'nope'"):
        attention(q, k, v, backend="nope")
    with pytest.raises(ValueError, match="kv_lens must have shape"):
        attention(q, k, v, torch.tensor([1]))
    calls = []
    register_attention_backend("recording", lambda *a: calls.append(1) or attention(*a), overwrite=True)
    assert "recording" in attention_backends()
    m = WanS2V(TINY).eval()
    for blk in m.blocks:
        blk.self_attn.attn_backend = "recording"
    with torch.no_grad():
        m(**inputs())
    assert len(calls) == TINY.num_layers  # only self-attention was routed through it


def test_audio_contributes_nothing_at_initialisation():
    torch.manual_seed(0)
    m = WanS2V(TINY).eval()
    args = inputs()
    with torch.no_grad():
        a = m(**args)
        args["audio_input"] = torch.randn_like(args["audio_input"])
        b = m(**args)
    assert torch.equal(a, b)
    zeroed = [m.audio_injector.injector[k].o for k in range(3)] + list(m.audio_injector.injector_adain_layers)
    assert all(not p.any() for mod in zeroed for p in mod.parameters())


def test_meta_build_materialises_with_init_weights():
    with torch.device("meta"):
        m = WanS2V(TINY)
    assert all(p.is_meta for p in m.parameters())
    m.to_empty(device="cpu")
    torch.manual_seed(0)
    m.init_weights()
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert not m.head.head.weight.any() and not m.trainable_cond_mask.weight.any()
    assert not m.cond_encoder.weight.any()
    assert torch.all(m.casual_audio_encoder.weights == 0.01)
    assert m.blocks[0].self_attn.q.weight.std() > 0
    with torch.no_grad():
        assert torch.isfinite(m(**inputs())).all()


def test_small_keeps_the_14b_attention_to_matmul_ratio():
    from s2vbench.bench.analytic import forward_flops

    def ratio(name):
        p = get_preset(name)
        c = p.clip
        return forward_flops(p.model, clip_layout(p.model, c)).attention_to_matmul

    big = ratio("14b")  # its clip is the paper's 44,544-token one
    assert 1.2 < big < 1.6
    assert 0.8 * big <= ratio("small") <= 1.2 * big


def test_no_module_calls_sdpa_directly():
    from pathlib import Path

    import s2vbench

    root = Path(s2vbench.__file__).parent / "model"
    users = [p.name for p in root.rglob("*.py") if "scaled_dot_product_attention" in p.read_text()]
    assert users == ["attention.py"]


def test_flash_attn_backend_is_lazy_and_explains_itself():
    pytest.importorskip("torch")
    try:
        import flash_attn  # noqa: F401
    except Exception:
        q = torch.randn(1, 4, 2, 16)
        with pytest.raises(ImportError, match="install the 'gpu' extra"):
            attention(q, q, q, backend="flash_attn")
    assert "flash_attn" in attention_backends()
