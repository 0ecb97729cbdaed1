"""The Wan 2.1 video VAE against the released key set and the fixture made with the official code."""

import json
import math

import pytest
import torch
from conftest import rel_err
from safetensors.torch import load_file, save_file

from s2vbench.model.checkpoint import CheckpointError
from s2vbench.model.vae import VAEInputError, WanVAE, WanVAEConfig, count_parameters, load_vae


@pytest.fixture(scope="module")
def fixture_dir(shared):
    return shared / "fixtures" / "wan21_vae_tiny"


@pytest.fixture(scope="module")
def tiny_vae(fixture_dir):
    cfg = json.loads((fixture_dir / "fixture.json").read_text())["config"]
    vae = WanVAE(WanVAEConfig(dim=cfg["dim"], z_dim=cfg["z_dim"], dim_mult=tuple(cfg["dim_mult"]),
                              num_res_blocks=cfg["num_res_blocks"], attn_scales=tuple(cfg["attn_scales"]),
                              temporal_downsample=tuple(cfg["temperal_downsample"])))
    vae.load_state_dict(load_file(fixture_dir / "weights.safetensors"), strict=True)
    return vae.eval()


@pytest.fixture(scope="module")
def tensors(fixture_dir):
    return load_file(fixture_dir / "tensors.safetensors")


def test_full_size_keys_shapes_and_parameter_count(shared):
    expected = json.loads((shared / "spec" / "wan21_vae_state_dict_shapes.json").read_text())
    with torch.device("meta"):
        vae = WanVAE(WanVAEConfig())
    got = {k: list(v.shape) for k, v in vae.state_dict().items()}
    assert sorted(set(expected) - set(got)) == [] and sorted(set(got) - set(expected)) == []
    assert got == expected
    assert len(got) == 194
    assert count_parameters(vae) == sum(math.prod(s) for s in expected.values()) == 126_892_531


@torch.no_grad()
def test_chunked_encode_matches_official(tiny_vae, tensors):
    scale = (tensors["scale_mean"], tensors["scale_inv_std"])
    latent = tiny_vae.encode(tensors["video"], scale)
    assert latent.shape == tensors["latent"].shape
    assert rel_err(latent, tensors["latent"]) <= 1e-5


@torch.no_grad()
def test_frame_by_frame_decode_matches_official(tiny_vae, tensors):
    scale = (tensors["scale_mean"], tensors["scale_inv_std"])
    video = tiny_vae.decode(tensors["latent"], scale)
    assert video.shape == tensors["decoded"].shape
    assert rel_err(video, tensors["decoded"]) <= 1e-5


@torch.no_grad()
def test_encoding_is_causal(tiny_vae, tensors):
    """Latent j depends on frames <= 4j only: changing frames 5..8 leaves latents 0 and 1 untouched."""
    video = tensors["video"]
    edited = video.clone()
    edited[:, :, 5:] = torch.rand_like(edited[:, :, 5:]) * 2 - 1
    a, b = tiny_vae.encode(video), tiny_vae.encode(edited)
    assert torch.equal(a[:, :, :2], b[:, :, :2])
    assert not torch.allclose(a[:, :, 2], b[:, :, 2])


@pytest.mark.parametrize("k", [0, 1, 2])
@torch.no_grad()
def test_encode_decode_keeps_shape(k):
    torch.manual_seed(k)
    vae = WanVAE(WanVAEConfig.tiny(dim=8)).eval()
    video = torch.rand(1, 3, 4 * k + 1, 16, 24) * 2 - 1
    latent = vae.encode(video)
    assert latent.shape == (1, 16, k + 1, 2, 3)
    assert vae.decode(latent).shape == video.shape


@pytest.mark.parametrize("shape, words", [
    ((1, 3, 6, 16, 16), "trim to 5 or pad to 9 frames"),
    ((1, 4, 5, 16, 16), "3 channels"),
    ((1, 3, 5, 20, 16), "multiples of 8"),
    ((3, 5, 16, 16), "[B, 3, T, H, W]"),
])
def test_bad_video_gives_clear_error(shape, words):
    vae = WanVAE(WanVAEConfig.tiny(dim=8))
    with pytest.raises(VAEInputError) as err:
        vae.encode(torch.zeros(shape))
    assert isinstance(err.value, ValueError) and words in str(err.value)


def test_bad_latent_gives_clear_error():
    vae = WanVAE(WanVAEConfig.tiny(dim=8))
    with pytest.raises(VAEInputError, match=r"\[B, 16, T, h, w\]"):
        vae.decode(torch.zeros(1, 8, 2, 2, 2))


def test_load_vae_strict(tmp_path, fixture_dir, tensors):
    weights = load_file(fixture_dir / "weights.safetensors")
    path = tmp_path / "vae.safetensors"
    save_file(weights, path)
    vae = load_vae(path, WanVAEConfig.tiny())
    assert all(torch.equal(vae.state_dict()[k], v) for k, v in weights.items())
    save_file({k: v for k, v in weights.items() if k != "conv2.bias"}, tmp_path / "short.safetensors")
    with pytest.raises(CheckpointError, match="conv2.bias"):
        load_vae(tmp_path / "short.safetensors", WanVAEConfig.tiny())
    torch.save(weights, tmp_path / "vae.pth")
    assert torch.equal(load_vae(tmp_path / "vae.pth", WanVAEConfig.tiny()).conv1.weight, weights["conv1.weight"])
