"""The audio front end against the official resampling and per-frame bucketing fixture."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from s2vbench.model.audio_frontend import (AudioFrontend, bucket_per_video_frame, resample_features,
                                           tiny_wav2vec2_config, video_frame_indices)


@pytest.fixture(scope="module")
def frontend_fixture(shared):
    fx = shared / "fixtures" / "wan_s2v_audio_frontend"
    return json.loads((fx / "fixture.json").read_text()), load_file(str(fx / "tensors.safetensors"))


def test_resampling_50_to_30_fps(frontend_fixture):
    meta, T = frontend_fixture
    for case in meta["cases"]:
        ours = resample_features(T[f"{case['name']}.hidden_states_50fps"])
        want = T[f"{case['name']}.features_30fps"]
        assert list(ours.shape) == case["features_30fps"]
        assert (ours - want).abs().max() <= 1e-6


def test_bucketing_picks_the_official_indices(frontend_fixture):
    meta, T = frontend_fixture
    for case in meta["cases"]:
        feats = T[f"{case['name']}.features_30fps"]
        want = T[f"{case['name']}.audio_input"]
        index, clips = video_frame_indices(feats.shape[1], case["infer_frames"])
        assert clips == case["num_clips"]
        assert len(index) == want.shape[-1]
        # Each fixture column must be exactly the feature our index names, or zeros past the audio.
        for k, i in enumerate(index):
            col = want[0, :, :, k]
            if i < feats.shape[1]:
                assert torch.equal(col, feats[:, i]), (case["name"], k, i)
            else:
                assert not col.any(), (case["name"], k, i)
        ours, ours_clips = bucket_per_video_frame(feats, case["infer_frames"])
        assert ours_clips == clips and list(ours.shape) == case["audio_input"]
        assert (ours - want).abs().max() <= 1e-6


def test_rounding_is_half_to_even():
    index, _ = video_frame_indices(1000, 16)
    # frame k sits at k*30/16 feature frames: k=4 -> 7.5 -> 8, k=12 -> 22.5 -> 22 (half to even)
    assert index[4] == 8 and index[12] == 22


def test_wav2vec2_from_config_and_from_a_local_folder(tmp_path):
    torch.manual_seed(0)
    fe = AudioFrontend(config=tiny_wav2vec2_config(hidden_size=32, num_layers=24))
    wav = np.random.default_rng(0).standard_normal(16000 * 2).astype(np.float32)
    hs = fe.hidden_states(wav)
    assert fe.num_hidden_states == 25 and hs.shape[0] == 25 and hs.shape[2] == 32
    assert abs(hs.shape[1] - 100) <= 1  # 50 fps
    fe.model.save_pretrained(tmp_path)
    fe.processor.save_pretrained(tmp_path)
    again = AudioFrontend(weights_dir=tmp_path)
    assert torch.allclose(again.hidden_states(wav), hs, atol=1e-6)
    audio_input, clips = again.audio_input(wav, infer_frames=16)
    assert audio_input.shape == (1, 25, 32, clips * 16)


def test_frontend_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        AudioFrontend(weights_dir=tmp_path)
    fe = AudioFrontend(config=tiny_wav2vec2_config(num_layers=2))
    with pytest.raises(ValueError, match="16000 Hz"):
        fe.hidden_states(np.zeros(8000, np.float32), sample_rate=8000)
    with pytest.raises(ValueError, match="mono"):
        fe.hidden_states(np.zeros((2, 8000), np.float32))
