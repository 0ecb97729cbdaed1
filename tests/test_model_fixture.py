"""Parity with the official Wan-S2V on the tiny fixture, and the 14b preset's exact state_dict."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import rel_err
from s2vbench.model import WanS2V, get_preset, load_checkpoint

TOL = 1e-5
RUNS = {"motion": False, "first": True}


@pytest.fixture(scope="module")
def tiny(shared):
    fx = shared / "fixtures" / "wan_s2v_tiny"
    meta = json.loads((fx / "fixture.json").read_text())
    model = WanS2V(get_preset("tiny").model).eval()
    report = load_checkpoint(model, fx / "weights.safetensors", strict=True)
    return model, load_file(str(fx / "tensors.safetensors")), meta, report


def run_fixture(model, tensors, drop_motion):
    with torch.no_grad(), model.capture_intermediates() as taps:
        out = model(tensors["x"][None], tensors["t"], tensors["context"][None], tensors["ref_latents"],
                    tensors["audio_input"], None if drop_motion else tensors["motion_latents"],
                    tensors["cond_states"])
    return out[0], taps


def test_tiny_preset_is_the_fixture_config(tiny):
    model, _, meta, report = tiny
    cfg = meta["config"]
    p = get_preset("tiny").model
    for key in ("dim", "ffn_dim", "num_heads", "num_layers", "text_len", "text_dim", "freq_dim", "audio_dim",
                "num_audio_token", "cond_dim", "in_dim", "out_dim", "eps"):
        assert getattr(p, key) == cfg[key], key
    assert list(p.audio_inject_layers) == cfg["audio_inject_layers"]
    assert list(p.patch_size) == cfg["patch_size"]
    assert report.num_tensors == 180 and report.num_params == 648_073


@pytest.mark.parametrize("run", list(RUNS))
def test_fixture_outputs_and_intermediates(tiny, run):
    model, T, meta, _ = tiny
    out, taps = run_fixture(model, T, RUNS[run])
    assert out.shape == T[f"out.{run}"].shape
    assert rel_err(out, T[f"out.{run}"]) <= TOL
    assert taps["mask_input"].shape[1] == meta["runs"][run]["seq_total"]
    assert torch.equal(taps["mask_input"], T[f"{run}.mask_input"])
    for name in ("audio_emb_local", "audio_emb_global", "time_projection_out", "text_embedding_out"):
        assert rel_err(taps[name], T[f"{run}.{name}"]) <= TOL, name
    rope = T[f"{run}.rope_freqs"][0, :, 0]  # identical across heads
    assert rel_err(taps["rope_cos"], rope[..., 0]) <= TOL
    assert rel_err(taps["rope_sin"], rope[..., 1]) <= TOL
    injected = [i for i in range(4) if f"{run}.after_inject.{i}" in T]
    assert injected == [0, 2, 3]
    for i in range(4):
        assert rel_err(taps[f"block_out.{i}"], T[f"{run}.block_out.{i}"]) <= TOL, f"block_out.{i}"
    for i in injected:
        assert rel_err(taps[f"after_inject.{i}"], T[f"{run}.after_inject.{i}"]) <= TOL, f"after_inject.{i}"
    assert set(k for k in taps if k.startswith("after_inject")) == {f"after_inject.{i}" for i in injected}


def test_audio_injection_only_changes_noisy_tokens(tiny):
    model, T, _, _ = tiny
    _, taps = run_fixture(model, T, drop_motion=False)
    n = int((taps["mask_input"] == 0).sum())
    for i in (0, 2, 3):
        delta = taps[f"after_inject.{i}"] - taps[f"block_out.{i}"]
        assert delta[:, n:].abs().max() == 0
        assert delta[:, :n].abs().max() > 0


def test_14b_on_meta_has_the_official_keys_shapes_and_count(shared):
    expected = json.loads((shared / "spec" / "wan_s2v_14b_state_dict_shapes.json").read_text())
    with torch.device("meta"):
        model = WanS2V(get_preset("14b").model)
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert len(expected) == 1260
    assert set(got) == set(expected)
    assert {k: v for k, v in got.items() if expected[k] != v} == {}
    assert sum(p.numel() for p in model.parameters()) == 16_295_755_609
    assert all(p.is_meta for p in model.parameters())
