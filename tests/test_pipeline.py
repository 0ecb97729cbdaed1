"""Multi-clip generation with the tiny preset: the official loop's motion buffer, the mp4, and bad inputs."""

import re

import numpy as np
import pytest
import soundfile
import torch
from conftest import rel_err
from PIL import Image

from s2vbench.model import WanS2V, get_preset
from s2vbench.model.pipeline import (
    GenerationConfig,
    MissingInputError,
    PipelineInputError,
    S2VInputs,
    S2VPipeline,
    audio_input_from_states,
    load_audio_features,
    load_reference_image,
    load_text_embedding,
    main,
    motion_buffer,
    random_text_embedding,
    read_mp4,
    read_wav,
    wav2vec2_frames,
)
from s2vbench.model.vae import WanVAE, WanVAEConfig

SIZE = 64          # pixels: latent 8 x 8, the smallest FramePack takes
INFER = 16         # frames per clip: 4 latent frames, the tiny preset's clip
CLIPS = 3


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    cfg = get_preset("tiny").model
    model = WanS2V(cfg).eval()
    # The official init zeroes the head and the audio/pose outputs, so a fresh model predicts zero velocity and
    # ignores its conditioning. Perturb every parameter so that motion, audio and pose reach the output.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    vae = WanVAE(WanVAEConfig(dim=8)).eval()
    return model, vae


def _inputs(cfg, seconds: float, seed: int = 0) -> S2VInputs:
    g = torch.Generator().manual_seed(seed)
    samples = int(seconds * 16000)
    states = torch.randn(cfg.audio_layers, wav2vec2_frames(samples), cfg.audio_dim, generator=g)
    audio_input, clips = audio_input_from_states(states, INFER)
    ref = torch.rand(3, SIZE, SIZE, generator=g) * 2 - 1
    return S2VInputs(ref, audio_input, clips, random_text_embedding(cfg, 10, seed),
                     random_text_embedding(cfg, 5, seed + 1))


@pytest.fixture(scope="module")
def generated(models):
    model, vae = models
    calls = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs.get("motion_latents")),
                                           with_kwargs=True)
    try:
        inputs = _inputs(model.cfg, seconds=2.2)
        assert inputs.audio_clips >= CLIPS
        result = S2VPipeline(model, vae).generate(inputs, GenerationConfig(infer_frames=INFER, steps=2,
                                                                           num_clips=CLIPS))
    finally:
        hook.remove()
    return inputs, result, calls


def test_clip_frame_counts(generated):
    _, result, _ = generated
    assert [c.frames for c in result.clips] == [INFER - 3] + [INFER] * (CLIPS - 1)
    assert result.video.shape == (3, INFER - 3 + INFER * (CLIPS - 1), SIZE, SIZE)
    assert result.video.abs().max() <= 1


def test_first_clip_has_no_motion(generated):
    _, result, calls = generated
    forwards_per_clip = 2 * 2  # 2 steps, CFG
    assert len(calls) == CLIPS * forwards_per_clip
    assert result.clips[0].motion_latents is None
    assert all(m is None for m in calls[:forwards_per_clip])
    assert all(m is not None and m.shape[2] == 19 for m in calls[forwards_per_clip:])


@torch.no_grad()
def test_motion_is_the_encoding_of_the_last_73_frames(models, generated):
    _, vae = models
    _, result, calls = generated
    done = 0
    for k, clip in enumerate(result.clips):
        if k > 0:
            # independently: the video so far, its last 73 frames left-padded with zeros, through the VAE
            expected = vae.encode(motion_buffer(result.video[:, :done], 73)[None])
            assert clip.motion_latents.shape == (1, 16, 19, SIZE // 8, SIZE // 8)
            assert rel_err(clip.motion_latents, expected) < 1e-6
            assert calls[4 * k] is clip.motion_latents or torch.equal(calls[4 * k], clip.motion_latents)
        done += clip.frames


@torch.no_grad()
def test_frames_are_the_decoded_clip_latents(models, generated):
    """Clip 0 decodes [ref | clip] and drops 3 frames; clip 1 decodes [motion | clip]; both keep the last I."""
    _, vae = models
    inputs, result, _ = generated
    ref_latent = vae.encode(inputs.ref_image[None, :, None])
    first = vae.decode(torch.cat([ref_latent, result.clips[0].latents], 2)).clamp(-1, 1)[0, :, -INFER:][:, 3:]
    assert rel_err(result.video[:, :INFER - 3], first) < 1e-6
    c1 = result.clips[1]
    second = vae.decode(torch.cat([c1.motion_latents, c1.latents], 2)).clamp(-1, 1)[0, :, -INFER:]
    assert rel_err(result.video[:, INFER - 3:2 * INFER - 3], second) < 1e-6


def test_motion_changes_the_clip(models, generated):
    """The motion tokens reach the DiT's output: the same clip sampled without them differs."""
    model, vae = models
    inputs, result, _ = generated
    again = S2VPipeline(model, vae).generate(inputs, GenerationConfig(infer_frames=INFER, steps=2, num_clips=2))
    assert torch.equal(again.clips[1].latents, result.clips[1].latents)  # deterministic given the seed
    from s2vbench.model.sampling import ClipConditions, sample_clip

    c1 = result.clips[1]
    noise = torch.randn(1, 16, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    ref_latent = vae.encode(inputs.ref_image[None, :, None])
    cond = ClipConditions(inputs.context, ref_latent, inputs.audio_input[..., INFER:2 * INFER], None)
    without = sample_clip(model, noise, cond, inputs.negative_context, steps=2)
    assert rel_err(without, c1.latents) > 1e-3


def _files(tmp_path, seconds=2.2, size=(SIZE, SIZE)):
    img = tmp_path / "ref.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(img)
    wav = tmp_path / "speech.wav"
    soundfile.write(wav, np.random.default_rng(1).standard_normal(int(seconds * 22050)).astype(np.float32) * 0.1,
                    22050)
    return img, wav


def test_cli_writes_a_readable_mp4(tmp_path, capsys):
    img, wav = _files(tmp_path)
    out = tmp_path / "video.mp4"
    assert main(["--image", str(img), "--audio", str(wav), "--out", str(out), "--preset", "tiny",
                 "--infer-frames", str(INFER), "--steps", "1", "--num-clips", "2", "--device", "cpu"]) == 0
    frames, fps = read_mp4(out)
    assert frames.shape == (INFER - 3 + INFER, SIZE, SIZE, 3)
    assert fps == 16
    printed = capsys.readouterr().out
    assert "random" in printed and "2 clip(s)" in printed


def test_cli_reports_bad_input_in_one_line_before_building_models(tmp_path, capsys, monkeypatch):
    import s2vbench.model.pipeline as pipeline

    img, wav = _files(tmp_path)
    bad = _damaged_pt(tmp_path / "text.pt", "truncated")
    common = ["--image", str(img), "--audio", str(wav), "--out", str(tmp_path / "video.mp4")]
    monkeypatch.setattr(pipeline, "build_models", lambda *a: pytest.fail("built the models before checking inputs"))
    for args, said in ((["--device", "banana"], r"--device 'banana' is not a device name torch knows; devices here: "
                                                r"cpu.*\. Pass \"cpu\""),
                       (["--device", "cpu", "--text-embedding", str(bad)], rf"text embedding file {re.escape(str(bad))} "
                                                                           rf"\(.* bytes\) cannot be read")):
        assert main(common + args) == 2
        err = capsys.readouterr().err
        assert re.fullmatch(rf"python -m s2vbench\.model\.pipeline: error: {said}[^\n]*\n", err), err
    with pytest.raises(PipelineInputError, match="cannot be read"):
        main(["--traceback", "--device", "cpu", "--text-embedding", str(bad)] + common)


def test_cli_as_a_module_exits_2_with_one_line(tmp_path):
    import subprocess
    import sys

    img, wav = _files(tmp_path)
    done = subprocess.run([sys.executable, "-m", "s2vbench.model.pipeline", "--image", str(img), "--audio", str(wav),
                           "--out", str(tmp_path / "video.mp4"), "--device", "banana"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("python -m s2vbench.model.pipeline: error: --device 'banana'")
    assert done.stderr.count("\n") == 1, done.stderr


def test_missing_audio_file(tmp_path):
    with pytest.raises(MissingInputError, match="audio file .*nope.wav does not exist"):
        read_wav(tmp_path / "nope.wav")
    assert issubclass(MissingInputError, FileNotFoundError) and issubclass(MissingInputError, ValueError)


def test_too_short_audio(tmp_path, models):
    _, wav = _files(tmp_path, seconds=0.02)
    with pytest.raises(PipelineInputError, match="too short .* pass a longer recording"):
        read_wav(wav)
    model, vae = models
    inputs = _inputs(model.cfg, seconds=0.5)          # covers 1 clip of 1 s
    with pytest.raises(PipelineInputError, match="audio is too short: it covers 1 clip.*but 3 were asked for"):
        S2VPipeline(model, vae).generate(inputs, GenerationConfig(infer_frames=INFER, steps=1, num_clips=3))


def test_image_of_wrong_size(tmp_path):
    img, _ = _files(tmp_path, size=(100, 90))
    with pytest.raises(PipelineInputError, match=r"100x90 .* multiple of 64 .* size=\(64, 64\)"):
        load_reference_image(img)
    assert load_reference_image(img, size=(64, 128)).shape == (3, 64, 128)
    with pytest.raises(MissingInputError):
        load_reference_image(tmp_path / "missing.png")


def test_bad_generation_config():
    with pytest.raises(PipelineInputError, match="multiple of 4"):
        GenerationConfig(infer_frames=18)


def _damaged_pt(path, how):
    """A .pt file as an interrupted copy or a wrong file leaves it."""
    torch.save({"context": torch.ones(4, 8)}, path)
    good = path.read_bytes()
    path.write_bytes({"truncated": good[:len(good) // 2], "random bytes": bytes(range(256)), "empty": b""}[how])
    return path


@pytest.mark.parametrize("how", ["truncated", "random bytes", "empty"])
def test_unreadable_pt_inputs_are_named(tmp_path, how):
    bad = _damaged_pt(tmp_path / "input.pt", how)
    for load, fix in ((load_text_embedding, "save the embedding again"),
                      (load_audio_features, "save the .* hidden states again")):
        with pytest.raises(PipelineInputError, match=rf"file {re.escape(str(bad))} \({bad.stat().st_size:,} bytes\) "
                                                     rf"cannot be read with torch\.load.*truncated or corrupt.*; {fix}"):
            load(bad)


def test_pt_inputs_must_hold_the_tensors_named(tmp_path):
    path = tmp_path / "input.pt"
    for held in ({"other": torch.ones(2)}, [1, 2], {"context": [1], "hidden_states": "x"}):
        torch.save(held, path)
        with pytest.raises(PipelineInputError, match="holds no 'hidden_states' tensor"):
            load_audio_features(path)
        with pytest.raises(PipelineInputError, match="must hold a tensor or a dict with 'context'"):
            load_text_embedding(path)


@torch.no_grad()
def test_pose_reaches_the_dit_as_its_vae_encoding(models, tmp_path):
    """With a pose video, clip r's cond_states are the VAE encoding of [first frame | its I frames] minus the
    first latent (the official load_pose_cond); the pose file is read, cropped and padded with -1 frames."""
    from s2vbench.model.pipeline import load_pose_video, write_mp4

    model, vae = models
    src = torch.rand(3, 20, SIZE, 2 * SIZE) * 2 - 1
    write_mp4(src, tmp_path / "pose.mp4")
    pose = load_pose_video(tmp_path / "pose.mp4", 2 * INFER, (SIZE, SIZE))
    assert pose.shape == (3, 2 * INFER, SIZE, SIZE)
    assert torch.all(pose[:, 20:] == -1) and not torch.all(pose[:, :20] == -1)
    inputs = _inputs(model.cfg, seconds=2.2)
    inputs.pose = pose
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("cond_states")), with_kwargs=True)
    try:
        S2VPipeline(model, vae).generate(inputs, GenerationConfig(infer_frames=INFER, steps=1, num_clips=2))
    finally:
        hook.remove()
    for r in range(2):
        clip = pose[:, r * INFER:(r + 1) * INFER]
        expected = vae.encode(torch.cat([clip[:, :1], clip], dim=1)[None])[:, :, 1:]
        assert seen[2 * r].shape == (1, 16, 4, SIZE // 8, SIZE // 8)
        assert rel_err(seen[2 * r], expected) < 1e-6


def test_weights_folder_loads_the_dit_and_the_vae(tmp_path, shared):
    """--weights DIR: the DiT through the official-format loader, the VAE from Wan2.1_VAE.* (strict)."""
    import json
    import shutil

    from safetensors.torch import load_file

    from s2vbench.model.pipeline import build_models

    # the released layout: DiT shards with a weight map, the VAE beside them
    shutil.copy(shared / "fixtures" / "wan_s2v_tiny" / "weights.safetensors", tmp_path / "dit.safetensors")
    keys = load_file(tmp_path / "dit.safetensors").keys()
    (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: "dit.safetensors" for k in keys}}))
    shutil.copy(shared / "fixtures" / "wan21_vae_tiny" / "weights.safetensors", tmp_path / "Wan2.1_VAE.safetensors")
    model, vae, notes = build_models("tiny", tmp_path, None, "cpu", 0)
    assert notes == []
    dit = load_file(tmp_path / "dit.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in dit.items())
    assert vae.cfg.dim == 16
    assert torch.equal(vae.decoder.head[2].weight, load_file(tmp_path / "Wan2.1_VAE.safetensors")["decoder.head.2.weight"])
    (tmp_path / "Wan2.1_VAE.safetensors").unlink()
    with pytest.raises(MissingInputError, match="Wan2.1_VAE"):
        build_models("tiny", tmp_path, None, "cpu", 0)
