"""Long-form speech-to-video generation: clip after clip, each conditioned on the video generated so far.

The loop is the official one (``wan/speech2video.py::generate``, see ``shared/spec/wan_s2v.md`` sections 5 and 7):

1. a rolling buffer of the last 73 pixel frames starts as zeros; the reference image is VAE-encoded once;
2. clip r samples ``F = (I + 3 + 73) // 4 - 19`` latent frames from noise seeded ``seed + r`` with UniPC and CFG,
   seeing the audio features of its I video frames and, except for the first clip (``drop_first_motion``),
   the motion latents: the VAE encoding of the buffer (19 latent frames, FramePack-compressed by the DiT);
3. the first clip decodes ``[ref latent | clip]`` and keeps its last I frames minus 3 (so I - 3 frames); later
   clips decode ``[motion latents | clip]`` and keep the last I frames; decoded video is clamped to [-1, 1];
4. the newest frames roll into the buffer, whose encoding is the next clip's motion.

Inputs: a reference image, a wav file (read with ``soundfile``), a text embedding and an optional pose video.
Audio features come from wav2vec2 when its weights are in a local folder; otherwise precomputed hidden states or,
for smoke runs, random ones (said in the result's notes). Text embeddings come from a file, from a local umT5
encoder through transformers, or are random (noted). Nothing is ever downloaded. The mp4 is written through the
ffmpeg binary that ``imageio-ffmpeg`` bundles.

Run it with ``python -m s2vbench.model.pipeline --image ref.png --audio speech.wav --out video.mp4`` (random
weights of the ``tiny`` preset) or ``--preset 14b --weights Wan2.2-S2V-14B/`` for the released model.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .audio_frontend import SAMPLE_RATE, VIDEO_FPS, AudioFrontend, bucket_per_video_frame, resample_features
from .cli import path_arg, seed_arg
from .config import WanS2VConfig
from .device import check_device
from .sampling import ClipConditions, sample_clip
from .vae import WanVAE

WAV2VEC2_RECEPTIVE_FIELD = 400
"""Samples under wav2vec2's first output frame (its conv stack: kernel 400, stride 320 overall)."""
WAV2VEC2_HOP = 320
MIN_AUDIO_SAMPLES = WAV2VEC2_RECEPTIVE_FIELD + WAV2VEC2_HOP
"""Two 50-fps wav2vec2 frames: the fewest that resample to one 30-fps feature."""
PIXEL_MULTIPLE = 64
"""Height and width must be multiples of this: 8 (VAE) x 8 (FramePack's 4x projector on the latent)."""
FIRST_CLIP_TRIM = 3
"""Frames the official loop drops from the start of the first clip (the decoded reference image's spill)."""


class PipelineInputError(ValueError):
    """An input the pipeline cannot use, with what to pass instead."""


class MissingInputError(PipelineInputError, FileNotFoundError):
    """An input file that does not exist."""


def _need_file(path: str | Path, what: str, fix: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{what} {path} does not exist; {fix}")
    return path


# ---- configuration and results --------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerationConfig:
    """How a long-form video is sampled. Defaults are the official Wan-S2V-14B settings."""

    infer_frames: int = 80
    """Pixel frames per clip at 16 fps, a multiple of 4 (the official default 80; 48 also used)."""
    steps: int = 40
    """UniPC denoising steps per clip."""
    shift: float = 3.0
    """Timestep shift of the sampling schedule."""
    guide_scale: float = 4.5
    """Classifier-free guidance scale; > 1 runs a second, unconditional forward per step."""
    seed: int = 0
    """Clip r's noise is drawn from a generator seeded ``seed + r``."""
    num_clips: int | None = None
    """Clips to generate; None: as many as the audio covers (the official count)."""
    drop_first_motion: bool = True
    """The first clip sees no motion tokens (the official setting)."""
    fps: int = VIDEO_FPS
    """Frame rate of the generated video."""
    dtype: str | None = None
    """None: the model's own dtype; "bfloat16": DiT forwards under bf16 autocast (the official GPU numerics)."""

    def __post_init__(self) -> None:
        if self.infer_frames <= 0 or self.infer_frames % 4:
            raise PipelineInputError(f"infer_frames={self.infer_frames}: must be a positive multiple of 4 "
                                     f"(the VAE makes 4 frames per latent); the official values are 48 and 80")
        if self.steps < 1:
            raise PipelineInputError(f"steps={self.steps}: must be at least 1")
        if self.num_clips is not None and self.num_clips < 1:
            raise PipelineInputError(f"num_clips={self.num_clips}: must be at least 1, or None for the audio's length")
        if self.dtype not in (None, "bfloat16"):
            raise PipelineInputError(f"dtype={self.dtype!r}: choose None or 'bfloat16'")

    def latent_frames(self, motion_frames: int = 73) -> int:
        """Latent frames F of one clip: ``(I + 3 + 73) // 4 - 19`` (20 for I = 80)."""
        return (self.infer_frames + 3 + motion_frames) // 4 - (motion_frames + 3) // 4


@dataclass
class S2VInputs:
    """Everything a generation is conditioned on, already as tensors (see the ``load_*`` helpers)."""

    ref_image: torch.Tensor
    """[3, H, W] in [-1, 1]; H and W multiples of 64."""
    audio_input: torch.Tensor
    """[1, layers, audio_dim, n * infer_frames] audio features, one per video frame (``bucket_per_video_frame``)."""
    audio_clips: int
    """Clips the audio covers (the official ``int(N_30fps / (I * 30 / 16)) + 1``)."""
    context: torch.Tensor
    """[1, L, text_dim] prompt embedding."""
    negative_context: torch.Tensor
    """[1, L', text_dim] negative-prompt embedding (the CFG branch)."""
    pose: torch.Tensor | None = None
    """[3, >= n * infer_frames, H, W] pose video in [-1, 1], or None for no pose."""
    notes: list[str] = field(default_factory=list)
    """What was stood in for (random audio features or text), for the record."""


@dataclass
class ClipRecord:
    """One generated clip."""

    index: int
    """r, from 0."""
    motion_latents: torch.Tensor | None
    """[1, z, 19, h, w] the DiT saw as motion (the buffer's encoding), or None for a clip without motion."""
    latents: torch.Tensor
    """[1, z, F, h, w] the sampled clip latent."""
    frames: int
    """Pixel frames the clip added to the video."""


@dataclass
class GeneratedVideo:
    """The output of :meth:`S2VPipeline.generate`."""

    video: torch.Tensor
    """[3, T, H, W] in [-1, 1] on CPU."""
    clips: list[ClipRecord]
    """Per-clip conditioning and latents."""
    fps: int
    """Frame rate."""
    notes: list[str]
    """Caveats carried over from the inputs."""


# ---- the loop -------------------------------------------------------------------------------------------
Stage = Callable[[str], contextlib.AbstractContextManager]
"""``stage(name)`` wraps each pipeline stage ("vae_encode", "dit_sampling", "vae_decode"), e.g. to time it."""


def _no_stage(_name: str) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext()


@contextlib.contextmanager
def flush_denormals(enabled: bool = True):
    """Treat subnormal floats as zero on CPU for the duration (restored to torch's default, off, afterwards).

    The VAE's convolutions over the all-zero start of the motion buffer make subnormal activations, which x86
    CPUs process in microcode: without this a CPU decode runs about 6x slower. Values below 1.2e-38 become 0."""
    if not enabled:
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


class S2VPipeline:
    """The DiT and the VAE, generating clip after clip as the official loop does."""

    def __init__(self, model: torch.nn.Module, vae: WanVAE):
        self.model = model.eval()
        self.vae = vae.eval()
        cfg: WanS2VConfig = model.cfg
        if vae.cfg.z_dim != cfg.in_dim:
            raise PipelineInputError(f"the VAE has z_dim={vae.cfg.z_dim} but the DiT takes in_dim={cfg.in_dim} "
                                     f"latent channels; pair models with the same latent width")
        self.cfg = cfg

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def check_inputs(self, inputs: S2VInputs, gen: GenerationConfig) -> int:
        """Validate the inputs against the model and the generation settings; return the number of clips."""
        cfg = self.cfg
        ref = inputs.ref_image
        if ref.ndim != 3 or ref.shape[0] != 3:
            raise PipelineInputError(f"ref_image must be [3, H, W] in [-1, 1], got shape {tuple(ref.shape)}")
        _check_size(*ref.shape[1:], what="reference image")
        a = inputs.audio_input
        if a.ndim != 4 or a.shape[0] != 1 or a.shape[1] != cfg.audio_layers or a.shape[2] != cfg.audio_dim:
            raise PipelineInputError(f"audio_input must be [1, {cfg.audio_layers}, {cfg.audio_dim}, frames] (the "
                                     f"model's audio_layers and audio_dim), got {tuple(a.shape)}; features from a "
                                     f"different wav2vec2 do not fit this preset")
        clips = gen.num_clips if gen.num_clips is not None else inputs.audio_clips
        if clips > inputs.audio_clips or a.shape[-1] < clips * gen.infer_frames:
            clip_s = gen.infer_frames / gen.fps
            raise PipelineInputError(
                f"the audio is too short: it covers {inputs.audio_clips} clip(s) of {gen.infer_frames} frames "
                f"({clip_s:g} s each at {gen.fps} fps) but {clips} were asked for; pass audio of at least "
                f"{(clips - 1) * clip_s:g} s or ask for at most {inputs.audio_clips} clip(s)")
        for name in ("context", "negative_context"):
            c = getattr(inputs, name)
            if c.ndim != 3 or c.shape[0] != 1 or c.shape[2] != cfg.text_dim or c.shape[1] > cfg.text_len:
                raise PipelineInputError(f"{name} must be [1, L <= {cfg.text_len}, {cfg.text_dim}] (the model's "
                                         f"text_len and text_dim), got {tuple(c.shape)}")
        if inputs.pose is not None:
            p = inputs.pose
            if p.ndim != 4 or p.shape[0] != 3 or tuple(p.shape[2:]) != tuple(ref.shape[1:]):
                raise PipelineInputError(f"pose must be [3, T, {ref.shape[1]}, {ref.shape[2]}] (the reference image's "
                                         f"size), got {tuple(p.shape)}; load it with load_pose_video(..., size)")
            if p.shape[1] < clips * gen.infer_frames:
                raise PipelineInputError(f"pose has {p.shape[1]} frames, fewer than {clips} x {gen.infer_frames}; "
                                         f"pad it with -1 frames as load_pose_video does")
            if self.cfg.cond_dim != self.vae.cfg.z_dim:
                raise PipelineInputError(f"a pose needs cond_dim == VAE z_dim, got {self.cfg.cond_dim}")
        return clips

    def pose_latents(self, pose_clip: torch.Tensor) -> torch.Tensor:
        """[3, I, H, W] pose frames -> [1, z, F, h, w]: the first frame repeated in front (so 1 + I frames encode
        to 1 + I/4 latents) and the first latent dropped, as the official ``load_pose_cond`` does."""
        clip = pose_clip.unsqueeze(0).to(self.device)
        return self.vae.encode(torch.cat([clip[:, :, :1], clip], dim=2))[:, :, 1:]

    @torch.no_grad()
    def generate(self, inputs: S2VInputs, gen: GenerationConfig, stage: Stage | None = None) -> GeneratedVideo:
        """Generate ``gen.num_clips`` clips (default: what the audio covers) and return the whole video."""
        clips = self.check_inputs(inputs, gen)
        with flush_denormals(self.device.type == "cpu"):
            return self._generate(inputs, gen, clips, stage or _no_stage)

    def _generate(self, inputs: S2VInputs, gen: GenerationConfig, clips: int, stage: Stage) -> GeneratedVideo:
        dev = self.device
        cfg = self.cfg
        mf = cfg.motion_frames
        _, h, w = inputs.ref_image.shape
        i_frames = gen.infer_frames
        f_lat = gen.latent_frames(mf)
        dtype = torch.bfloat16 if gen.dtype == "bfloat16" else None
        context = inputs.context.to(dev)
        negative = inputs.negative_context.to(dev)

        with stage("vae_encode"):
            ref_latents = self.vae.encode(inputs.ref_image[None, :, None].to(dev))
        buffer = torch.zeros(1, 3, mf, h, w, device=dev)
        motion_latents = None
        if not gen.drop_first_motion:
            with stage("vae_encode"):
                motion_latents = self.vae.encode(buffer)

        frames: list[torch.Tensor] = []
        records: list[ClipRecord] = []
        for r in range(clips):
            first_without_motion = gen.drop_first_motion and r == 0
            g = torch.Generator().manual_seed(gen.seed + r)
            noise = torch.randn(1, cfg.in_dim, f_lat, h // 8, w // 8, generator=g).to(dev)
            cond_states = None
            if inputs.pose is not None:
                with stage("vae_encode"):
                    cond_states = self.pose_latents(inputs.pose[:, r * i_frames:(r + 1) * i_frames])
            cond = ClipConditions(context=context, ref_latents=ref_latents,
                                  audio_input=inputs.audio_input[..., r * i_frames:(r + 1) * i_frames].to(dev),
                                  motion_latents=None if first_without_motion else motion_latents,
                                  cond_states=cond_states)
            with stage("dit_sampling"):
                latents = sample_clip(self.model, noise, cond, negative, gen.guide_scale, gen.steps, gen.shift,
                                      dtype=dtype)
            with stage("vae_decode"):
                prefix = ref_latents if first_without_motion else motion_latents
                image = self.vae.decode(torch.cat([prefix, latents], dim=2)).clamp_(-1, 1)[:, :, -i_frames:]
            if first_without_motion:
                image = image[:, :, FIRST_CLIP_TRIM:]
            records.append(ClipRecord(r, cond.motion_latents, latents.cpu(), image.shape[2]))
            frames.append(image.cpu())
            keep = min(mf, image.shape[2])
            buffer = torch.cat([buffer[:, :, keep:], image[:, :, -keep:]], dim=2)
            if r + 1 < clips:  # the official loop also encodes after the last clip; nothing uses that encoding
                with stage("vae_encode"):
                    motion_latents = self.vae.encode(buffer)
        return GeneratedVideo(torch.cat(frames, dim=2)[0], records, gen.fps, list(inputs.notes))


def motion_buffer(video_so_far: torch.Tensor, motion_frames: int = 73) -> torch.Tensor:
    """The last ``motion_frames`` frames of a [3, T, H, W] video, left-padded with zero frames: what the
    rolling buffer holds after T generated frames."""
    c, t, h, w = video_so_far.shape
    tail = video_so_far[:, max(0, t - motion_frames):]
    pad = video_so_far.new_zeros(c, motion_frames - tail.shape[1], h, w)
    return torch.cat([pad, tail], dim=1)


# ---- inputs ---------------------------------------------------------------------------------------------
def _check_size(h: int, w: int, what: str) -> None:
    if h % PIXEL_MULTIPLE or w % PIXEL_MULTIPLE or h == 0 or w == 0:
        fix_h, fix_w = max(PIXEL_MULTIPLE, h // PIXEL_MULTIPLE * PIXEL_MULTIPLE), \
            max(PIXEL_MULTIPLE, w // PIXEL_MULTIPLE * PIXEL_MULTIPLE)
        raise PipelineInputError(
            f"the {what} is {h}x{w} (HxW) pixels, but the generation size must be a multiple of {PIXEL_MULTIPLE} "
            f"in both axes (VAE stride 8 x FramePack's 4x projector on 8 latent pixels); pass size=({fix_h}, {fix_w}) "
            f"(--size {fix_h}x{fix_w}) to resize and center-crop it, as the official pipeline does")


def resize_center_crop(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[N, C, h, w] float -> [N, C, H, W]: scale (bilinear, antialiased) so the image covers H x W, then crop
    the centre."""
    th, tw = size
    _, _, h, w = frames.shape
    s = max(th / h, tw / w)
    nh, nw = max(th, round(h * s)), max(tw, round(w * s))
    if (nh, nw) != (h, w):
        frames = F.interpolate(frames, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - th) // 2, (nw - tw) // 2
    return frames[:, :, top:top + th, left:left + tw]


def load_reference_image(path: str | Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """An image file -> [3, H, W] in [-1, 1]. Without ``size`` the image must already be a multiple of 64 in
    both axes; with it, the image is resized to cover H x W and centre-cropped."""
    path = _need_file(path, "reference image", "pass an existing image file (png, jpg)")
    from PIL import Image  # Pillow comes with matplotlib

    with Image.open(path) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
    img = torch.from_numpy(rgb).permute(2, 0, 1) / 127.5 - 1.0
    if size is not None:
        _check_size(*size, what="requested size")
        img = resize_center_crop(img[None], size)[0].clamp(-1, 1)
    _check_size(*img.shape[1:], what=f"reference image {path.name}")
    return img


def read_wav(path: str | Path) -> np.ndarray:
    """A sound file -> mono float32 samples at 16 kHz (channels averaged, resampled with the bundled ffmpeg)."""
    path = _need_file(path, "audio file", "pass an existing wav file (16 kHz mono is used as is)")
    import soundfile

    try:
        wav, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    except RuntimeError as e:
        raise PipelineInputError(f"could not read audio file {path} ({e}); pass a wav/flac/ogg file") from None
    wav = wav.mean(axis=1)
    if sr != SAMPLE_RATE:
        wav = _resample(wav, sr)
    if wav.shape[0] < MIN_AUDIO_SAMPLES:
        raise PipelineInputError(
            f"audio file {path} lasts {wav.shape[0] / SAMPLE_RATE:.3f} s, too short for wav2vec2 to make one audio "
            f"feature (it needs {MIN_AUDIO_SAMPLES / SAMPLE_RATE:.3f} s); pass a longer recording "
            f"(one clip of 80 frames is 5 s)")
    return wav


def _resample(wav: np.ndarray, sr: int) -> np.ndarray:
    import imageio_ffmpeg

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.f32", Path(tmp) / "out.f32"
        wav.astype("<f4").tofile(src)
        subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "f32le", "-ar", str(sr), "-ac", "1",
                        "-i", str(src), "-ar", str(SAMPLE_RATE), "-f", "f32le", str(dst)], check=True)
        return np.fromfile(dst, dtype="<f4")


def wav2vec2_frames(num_samples: int) -> int:
    """50-fps hidden states wav2vec2 makes from ``num_samples`` samples at 16 kHz."""
    return max(0, (num_samples - WAV2VEC2_RECEPTIVE_FIELD) // WAV2VEC2_HOP + 1)


def audio_hidden_states(wav: np.ndarray, cfg: WanS2VConfig, frontend: AudioFrontend | None = None,
                        seed: int = 0) -> tuple[torch.Tensor, str | None]:
    """[layers, T_50fps, audio_dim] hidden states of the waveform, and a note when they are stand-ins.

    With a wav2vec2 ``frontend`` they are real; without one they are random normal values of the length
    wav2vec2 would give (so every later stage runs on the right shapes)."""
    if frontend is not None:
        states = frontend.hidden_states(wav)
        if states.shape[0] != cfg.audio_layers or states.shape[2] != cfg.audio_dim:
            raise PipelineInputError(f"the wav2vec2 model gives {states.shape[0]} hidden states of width "
                                     f"{states.shape[2]}, the DiT takes {cfg.audio_layers} of {cfg.audio_dim}")
        return states, None
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(cfg.audio_layers, wav2vec2_frames(wav.shape[0]), cfg.audio_dim, generator=g)
    return states, ("audio features are random normal values of wav2vec2's shape (no wav2vec2 weights were given): "
                    "the audio drives nothing")


def audio_input_from_states(states: torch.Tensor, infer_frames: int) -> tuple[torch.Tensor, int]:
    """50-fps hidden states -> (audio_input [1, layers, C, clips * infer_frames], clips), as the official does."""
    if states.shape[1] < 2:
        raise PipelineInputError(f"audio features have {states.shape[1]} frame(s) at 50 fps; at least 2 are needed "
                                 f"for one 30-fps feature, i.e. {MIN_AUDIO_SAMPLES / SAMPLE_RATE:.3f} s of audio")
    return bucket_per_video_frame(resample_features(states), infer_frames)


def _read_tensor_file(path: Path, what: str, fix: str) -> object:
    """What a .safetensors file (a dict of tensors) or a .pt file (``torch.load(weights_only=True)``) holds; a
    file neither can read is a :class:`PipelineInputError` naming it and ``fix``."""
    from .checkpoint import load_torch_file, read_tensors

    if path.suffix == ".safetensors":
        return read_tensors(path, what, PipelineInputError)
    return load_torch_file(path, what, fix, PipelineInputError)


def load_audio_features(path: str | Path) -> torch.Tensor:
    """Precomputed wav2vec2 hidden states [layers, T_50fps, C] from a .safetensors (key "hidden_states") or .pt."""
    path = _need_file(path, "audio features file", "pass hidden states saved as .safetensors or .pt")
    data = _read_tensor_file(path, "audio features file", "save the [layers, T, C] wav2vec2 hidden states again, "
                                                          "under the key 'hidden_states'")
    states = data.get("hidden_states") if isinstance(data, dict) else data
    if not isinstance(states, torch.Tensor):
        keys = f"keys {sorted(map(str, data))}" if isinstance(data, dict) else f"a {type(data).__name__}"
        raise PipelineInputError(f"{path} holds no 'hidden_states' tensor ({keys}); save the [layers, T, C] wav2vec2 "
                                 f"hidden states as a tensor or under that key")
    if states.ndim != 3:
        raise PipelineInputError(f"audio features must be [layers, T_50fps, C], got {tuple(states.shape)}")
    return states.float()


def load_text_embedding(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(context [1, L, D], negative [1, L', D] or None) from .safetensors or .pt: a tensor, or tensors under
    "context" and optionally "negative_context"."""
    path = _need_file(path, "text embedding file", "pass a .safetensors/.pt file holding 'context' [L, text_dim]")
    data = _read_tensor_file(path, "text embedding file", "save the embedding again: a [L, text_dim] tensor, or "
                                                          "'context' and optionally 'negative_context'")
    if isinstance(data, torch.Tensor):
        data = {"context": data}
    if not isinstance(data, dict) or "context" not in data or any(
            not isinstance(data[k], torch.Tensor) for k in ("context", "negative_context") if k in data):
        raise PipelineInputError(f"{path} must hold a tensor or a dict with 'context' (and optionally "
                                 f"'negative_context'), [L, text_dim] each")

    def batch1(t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        return t[None] if t.ndim == 2 else t

    neg = data.get("negative_context")
    return batch1(data["context"]), None if neg is None else batch1(neg)


def encode_text_umt5(folder: str | Path, prompts: list[str], text_len: int) -> list[torch.Tensor]:
    """Embeddings [1, L_i, D] of the prompts through a local Hugging Face umT5 encoder folder (no download).
    Each is cut at its own token count, as the official T5 wrapper returns them."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise MissingInputError(f"{folder} is not a Hugging Face umT5 folder (no config.json); point --text-encoder "
                                f"at a local google/umt5-xxl (tokenizer + encoder weights)")
    from transformers import AutoTokenizer, UMT5EncoderModel

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    enc = UMT5EncoderModel.from_pretrained(folder, local_files_only=True).eval()
    out = []
    with torch.no_grad():
        for p in prompts:
            ids = tok([p], padding="max_length", truncation=True, max_length=text_len, return_tensors="pt")
            n = int(ids.attention_mask.sum())
            hidden = enc(input_ids=ids.input_ids, attention_mask=ids.attention_mask).last_hidden_state
            out.append(hidden[:, :n].float())
    return out


def random_text_embedding(cfg: WanS2VConfig, tokens: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, min(tokens, cfg.text_len), cfg.text_dim, generator=g)


def load_pose_video(path: str | Path, frames: int, size: tuple[int, int]) -> torch.Tensor:
    """The first ``frames`` frames of a pose video -> [3, frames, H, W] in [-1, 1], resized to cover H x W and
    centre-cropped, padded at the end with -1 frames (the official padding)."""
    path = _need_file(path, "pose video", "pass an existing video file, or no pose")
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    w, h = meta["size"]
    got = []
    for raw in reader:
        got.append(torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(h, w, 3))
        if len(got) == frames:
            break
    reader.close()
    if not got:
        raise PipelineInputError(f"pose video {path} has no frames")
    clip = torch.stack(got).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    clip = resize_center_crop(clip, size).clamp(-1, 1).permute(1, 0, 2, 3)
    if clip.shape[1] < frames:
        clip = torch.cat([clip, -torch.ones(3, frames - clip.shape[1], *size)], dim=1)
    return clip


# ---- output ---------------------------------------------------------------------------------------------
def to_uint8(video: torch.Tensor) -> np.ndarray:
    """[3, T, H, W] in [-1, 1] -> [T, H, W, 3] uint8."""
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).contiguous().numpy()


def write_mp4(video: torch.Tensor, path: str | Path, fps: int = VIDEO_FPS, audio_path: str | Path | None = None
              ) -> Path:
    """Encode [3, T, H, W] in [-1, 1] as H.264 (yuv420p) with the bundled ffmpeg; mux the audio if given."""
    import imageio_ffmpeg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = to_uint8(video)
    _, h, w, _ = frames.shape
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=fps, codec="libx264", macro_block_size=1,
                                         quality=8, audio_path=None if audio_path is None else str(audio_path),
                                         audio_codec=None if audio_path is None else "aac",
                                         output_params=["-shortest"] if audio_path is not None else None)
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    return path


def read_mp4(path: str | Path) -> tuple[np.ndarray, float]:
    """(frames [T, H, W, 3] uint8, fps) of a video file, decoded with the bundled ffmpeg."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    w, h = meta["size"]
    frames = [np.frombuffer(raw, dtype=np.uint8).reshape(h, w, 3) for raw in reader]
    return np.stack(frames), float(meta["fps"])


# ---- command line ---------------------------------------------------------------------------------------
OFFICIAL_VAE_FILES = ("Wan2.1_VAE.safetensors", "Wan2.1_VAE.pth")
WAV2VEC2_FOLDER = "wav2vec2-large-xlsr-53-english"
RANDOM_VAE_DIM = {"tiny": 8, "small": 8}
"""Base width of the random-weight VAE per preset (96, the released width, for the others)."""


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must be HxW, e.g. 704x1024") from None
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .config import PRESETS

    parser.add_argument("--image", required=True, type=path_arg, help="reference image (png, jpg)")
    parser.add_argument("--audio", required=True, type=path_arg, help="driving audio (wav; resampled to 16 kHz mono)")
    parser.add_argument("--out", required=True, type=path_arg, help="output mp4")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="DiT preset (default tiny)")
    parser.add_argument("--weights", type=path_arg, help="local folder of the released model (Wan2.2-S2V-14B): DiT "
                        "safetensors, Wan2.1_VAE.pth, wav2vec2-large-xlsr-53-english/; default: random weights")
    parser.add_argument("--vae-dim", type=int, help="base width of a random-weight VAE (default: 8 for tiny and small, "
                        "96 otherwise)")
    parser.add_argument("--size", type=_size, help="HxW, multiples of 64 (default: the image's own size)")
    parser.add_argument("--text-embedding", type=path_arg, help="precomputed prompt embedding (.safetensors/.pt with "
                        "'context' and optionally 'negative_context')")
    parser.add_argument("--text-encoder", type=path_arg, help="local Hugging Face umT5 folder (with --prompt)")
    parser.add_argument("--prompt", default="", help="prompt for --text-encoder")
    parser.add_argument("--negative-prompt", default="", help="negative prompt for --text-encoder")
    parser.add_argument("--audio-features", type=path_arg, help="precomputed wav2vec2 hidden states [layers, T_50fps, C]")
    parser.add_argument("--wav2vec2", type=path_arg, help="local wav2vec2 folder (default: the one in --weights)")
    parser.add_argument("--pose", type=path_arg, help="optional pose video")
    parser.add_argument("--infer-frames", type=int, default=None, help="frames per clip (default: 80, or the "
                        "preset's clip for tiny/small)")
    parser.add_argument("--num-clips", type=int, help="clips to generate (default: as many as the audio covers)")
    parser.add_argument("--steps", type=int, default=40, help="sampling steps per clip")
    parser.add_argument("--guide-scale", type=float, default=4.5, help="CFG scale")
    parser.add_argument("--shift", type=float, default=3.0, help="timestep shift")
    parser.add_argument("--seed", type=seed_arg, default=0, help="noise seed (clip r uses seed + r), and random weights'")
    parser.add_argument("--bf16", action="store_true", help="DiT forwards under bf16 autocast")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu, cuda or cuda:i (default: cuda where there is one)")


def build_models(preset_name: str, weights: Path | None, vae_dim: int | None, device: str | torch.device, seed: int
                 ) -> tuple[torch.nn.Module, WanVAE, list[str]]:
    """The DiT and the VAE on ``device``: released weights from a local folder, or random ones (noted)."""
    from .checkpoint import load_checkpoint
    from .config import get_preset
    from .model import WanS2V
    from .vae import WanVAEConfig, load_vae

    device = check_device(device)  # before the weights load, which takes minutes for 14b
    preset = get_preset(preset_name)
    notes = []
    torch.manual_seed(seed)
    if weights is not None:
        with torch.device("meta"):
            model = WanS2V(preset.model)
        load_checkpoint(model, weights)
        vae_file = next((weights / f for f in OFFICIAL_VAE_FILES if (weights / f).is_file()), None)
        if vae_file is None:
            raise MissingInputError(f"{weights} holds no {' or '.join(OFFICIAL_VAE_FILES)}; copy the released VAE "
                                    f"there")
        vae = load_vae(vae_file, device=device)
    else:
        model = WanS2V(preset.model)
        dim = vae_dim or RANDOM_VAE_DIM.get(preset_name, 96)
        vae = WanVAE(WanVAEConfig(dim=dim))
        notes.append(f"random weights: DiT preset {preset_name}, VAE base width {dim}; the video is noise")
    return model.to(device).eval().requires_grad_(False), vae.to(device).eval().requires_grad_(False), notes


def prepare_inputs(args: argparse.Namespace, cfg: WanS2VConfig, infer_frames: int, device: str | torch.device
                   ) -> S2VInputs:
    notes: list[str] = []
    ref = load_reference_image(args.image, args.size)
    wav = read_wav(args.audio)
    if args.audio_features is not None:
        states = load_audio_features(args.audio_features)
    else:
        folder = args.wav2vec2 or (args.weights / WAV2VEC2_FOLDER if args.weights is not None else None)
        frontend = AudioFrontend(folder, device=device) if folder is not None and folder.is_dir() else None
        states, note = audio_hidden_states(wav, cfg, frontend, args.seed)
        if note:
            notes.append(note)
    audio_input, audio_clips = audio_input_from_states(states, infer_frames)
    if args.text_embedding is not None:
        context, negative = load_text_embedding(args.text_embedding)
        if negative is None:
            negative = torch.zeros_like(context[:, :1])
            notes.append("no negative_context in the text embedding file: the CFG branch uses one zero token")
    elif args.text_encoder is not None:
        context, negative = encode_text_umt5(args.text_encoder, [args.prompt, args.negative_prompt], cfg.text_len)
    else:
        context = random_text_embedding(cfg, cfg.text_len, args.seed)
        negative = random_text_embedding(cfg, cfg.text_len, args.seed + 1)
        notes.append("text embeddings are random (no --text-embedding or --text-encoder given)")
    pose = None
    if args.pose is not None:
        clips = args.num_clips or audio_clips
        pose = load_pose_video(args.pose, clips * infer_frames, tuple(ref.shape[1:]))
    return S2VInputs(ref, audio_input, audio_clips, context, negative, pose, notes)


def run(args: argparse.Namespace) -> int:
    import time

    from .config import get_preset

    device = check_device(args.device, "--device")
    preset = get_preset(args.preset)
    infer_frames = args.infer_frames or (preset.clip.infer_frames if args.preset in RANDOM_VAE_DIM else 80)
    gen = GenerationConfig(infer_frames=infer_frames, steps=args.steps, shift=args.shift, guide_scale=args.guide_scale,
                           seed=args.seed, num_clips=args.num_clips, dtype="bfloat16" if args.bf16 else None)
    # inputs first: a bad file is refused before the weights load, which takes minutes for 14b
    inputs = prepare_inputs(args, preset.model, infer_frames, device)
    model, vae, notes = build_models(args.preset, args.weights, args.vae_dim, device, args.seed)
    inputs.notes[:0] = notes
    start = time.perf_counter()
    result = S2VPipeline(model, vae).generate(inputs, gen)
    path = write_mp4(result.video, args.out, result.fps, audio_path=args.audio)
    print(f"{len(result.clips)} clip(s), {result.video.shape[1]} frames of {result.video.shape[2]}x"
          f"{result.video.shape[3]} at {result.fps} fps in {time.perf_counter() - start:.1f} s -> {path}")
    for note in result.notes:
        print(f"note: {note}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The command line: input it cannot use (a value, a file, a device) is one ``error:`` line and exit status
    2, as every s2vbench command reports it; ``--traceback`` shows where it came from instead."""
    from .checkpoint import CheckpointError

    parser = argparse.ArgumentParser(prog="python -m s2vbench.model.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--traceback", action="store_true",
                        help="on an error, show the Python traceback instead of the one-line message")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (ValueError, OSError, CheckpointError) as e:
        if args.traceback:
            raise
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2


__all__ = ["ClipRecord", "GeneratedVideo", "GenerationConfig", "MissingInputError", "PipelineInputError",
           "S2VInputs", "S2VPipeline", "audio_hidden_states", "audio_input_from_states", "build_models",
           "encode_text_umt5", "flush_denormals", "load_audio_features", "load_pose_video", "load_reference_image",
           "load_text_embedding", "motion_buffer", "random_text_embedding", "read_mp4", "read_wav",
           "resize_center_crop", "to_uint8", "wav2vec2_frames", "write_mp4"]

if __name__ == "__main__":
    raise SystemExit(main())
