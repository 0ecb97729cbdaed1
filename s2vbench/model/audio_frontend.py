"""Audio front end: wav2vec2 hidden states, resampled from 50 to 30 fps, one feature per 16-fps video frame.

The official pipeline runs ``Wav2Vec2ForCTC`` (wav2vec2-large-xlsr-53-english) on 16 kHz audio and keeps all
25 hidden states (embedding output + 24 layers); the CTC head is never used, so the bare ``Wav2Vec2Model``
gives the same hidden states. ``transformers`` is imported only when a wav2vec2 model is built.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import open_safetensors
from .device import check_device

WAV2VEC2_FPS = 50
"""Hidden-state rate of wav2vec2 on 16 kHz audio (a stride of 320 samples)."""
AUDIO_FEATURE_FPS = 30
"""Rate the hidden states are linearly resampled to (the official ``video_rate``)."""
VIDEO_FPS = 16
"""Frame rate of generated video."""
SAMPLE_RATE = 16000


def resample_features(features: torch.Tensor, in_fps: int = WAV2VEC2_FPS,
                      out_fps: int = AUDIO_FEATURE_FPS) -> torch.Tensor:
    """[layers, T, C] at ``in_fps`` -> [layers, int(T / in_fps * out_fps), C] by linear interpolation with
    aligned corners (the first and last frames are kept exactly)."""
    if features.ndim != 3:
        raise ValueError(f"features must be [layers, T, C], got {tuple(features.shape)}")
    out_len = int(features.shape[1] / float(in_fps) * out_fps)
    if out_len < 1:
        raise ValueError(f"{features.shape[1]} frames at {in_fps} fps is shorter than one frame at {out_fps} fps")
    y = F.interpolate(features.transpose(1, 2), size=out_len, mode="linear", align_corners=True)
    return y.transpose(1, 2)


def video_frame_indices(num_features: int, infer_frames: int, fps: int = VIDEO_FPS,
                        feature_fps: int = AUDIO_FEATURE_FPS) -> tuple[np.ndarray, int]:
    """Feature index for every video frame of every clip, and the number of clips.

    Clips of ``infer_frames`` frames are laid end to end until they cover the audio (always at least one
    more than fit wholly). Frame k of the whole video takes feature round(k / fps * feature_fps), rounded half
    to even; indices at or past ``num_features`` mean "no audio" (a zero row)."""
    if infer_frames <= 0:
        raise ValueError(f"infer_frames must be positive, got {infer_frames}")
    num_clips = int(num_features / (infer_frames * feature_fps / fps)) + 1
    total = num_clips * infer_frames
    times = np.linspace(0, total / fps, total, endpoint=False)
    index = np.round(times * feature_fps).astype(int)  # numpy rounds half to even
    padded_len = math.ceil(total / fps * feature_fps)
    return np.clip(index, 0, padded_len - 1), num_clips


def bucket_per_video_frame(features: torch.Tensor, infer_frames: int, fps: int = VIDEO_FPS,
                           feature_fps: int = AUDIO_FEATURE_FPS) -> tuple[torch.Tensor, int]:
    """[layers, N, C] features at ``feature_fps`` -> (audio_input [1, layers, C, clips * infer_frames], clips):
    one feature per video frame, laid out as the model takes it. Slice ``[..., r*I:(r+1)*I]`` for clip r."""
    layers, n, c = features.shape
    index, num_clips = video_frame_indices(n, infer_frames, fps, feature_fps)
    idx = torch.as_tensor(index, device=features.device)
    valid = idx < n
    rows = features[:, idx.clamp(max=n - 1)] * valid[None, :, None].to(features.dtype)
    return rows.permute(0, 2, 1).unsqueeze(0), num_clips


def wav2vec2_large_config():
    """The architecture of wav2vec2-large-xlsr-53-english, the official audio encoder (315 M parameters): 24
    layers of 1024 with 16 heads and 4096-wide feed-forwards, the stable (pre-norm) layer norm."""
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                          do_stable_layer_norm=True, feat_extract_norm="layer", conv_bias=True)


def tiny_wav2vec2_config(hidden_size: int = 32, num_layers: int = 24):
    """A small random-weight wav2vec2 config with the real frame rate (for tests and CPU smoke runs)."""
    from transformers import Wav2Vec2Config

    return Wav2Vec2Config(hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=2,
                          intermediate_size=2 * hidden_size, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                          num_conv_pos_embedding_groups=2, vocab_size=32, do_stable_layer_norm=True,
                          feat_extract_norm="layer")


class AudioFrontend:
    """wav2vec2 feature extractor + model, built from a config or loaded from a local folder (no download)."""

    def __init__(self, weights_dir: str | Path | None = None, config=None, device: str | torch.device = "cpu"):
        from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model

        device = check_device(device)
        if weights_dir is not None:
            weights_dir = Path(weights_dir)
            if not (weights_dir / "config.json").is_file():
                raise FileNotFoundError(f"{weights_dir} is not a wav2vec2 folder (no config.json); point it at the "
                                        f"checkpoint's wav2vec2-large-xlsr-53-english folder")
            # transformers would let safetensors' bare error about a damaged file through, naming no file
            for f in sorted(weights_dir.glob("*.safetensors")):
                with open_safetensors(f, "wav2vec2 weights file"):
                    pass
            self.model = Wav2Vec2Model.from_pretrained(weights_dir, local_files_only=True)
            if (weights_dir / "preprocessor_config.json").is_file():
                self.processor = Wav2Vec2FeatureExtractor.from_pretrained(weights_dir, local_files_only=True)
            else:
                self.processor = Wav2Vec2FeatureExtractor(sampling_rate=SAMPLE_RATE, do_normalize=True)
        else:
            if config is None:
                raise ValueError("AudioFrontend needs weights_dir (a local wav2vec2 folder) or a Wav2Vec2Config")
            self.model = Wav2Vec2Model(config)
            self.processor = Wav2Vec2FeatureExtractor(sampling_rate=SAMPLE_RATE, do_normalize=True)
        self.model = self.model.to(device).eval()
        self.device = device

    @property
    def num_hidden_states(self) -> int:
        return self.model.config.num_hidden_layers + 1

    @torch.no_grad()
    def hidden_states(self, waveform: np.ndarray | torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
        """Mono 16 kHz waveform [samples] -> all hidden states [layers, T_50fps, C] (float32)."""
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"wav2vec2 takes {SAMPLE_RATE} Hz audio, got {sample_rate} Hz; resample it first")
        wav = np.asarray(waveform.cpu() if isinstance(waveform, torch.Tensor) else waveform, dtype=np.float32)
        if wav.ndim != 1:
            raise ValueError(f"waveform must be mono [samples], got shape {wav.shape}")
        inputs = self.processor(wav, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_values
        out = self.model(inputs.to(self.device), output_hidden_states=True)
        return torch.cat(out.hidden_states).float()

    def audio_input(self, waveform: np.ndarray | torch.Tensor, infer_frames: int,
                    sample_rate: int = SAMPLE_RATE) -> tuple[torch.Tensor, int]:
        """Waveform -> (audio_input [1, layers, C, clips * infer_frames], clips), as the model takes it."""
        return bucket_per_video_frame(resample_features(self.hidden_states(waveform, sample_rate)), infer_frames)


__all__ = ["AUDIO_FEATURE_FPS", "AudioFrontend", "SAMPLE_RATE", "VIDEO_FPS", "WAV2VEC2_FPS", "bucket_per_video_frame",
           "resample_features", "tiny_wav2vec2_config", "video_frame_indices",
           "wav2vec2_large_config"]
