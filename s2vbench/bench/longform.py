"""``s2vbench longform``: what long-form generation costs per clip, with FramePack and without it.

Wan-S2V makes long videos clip after clip; each clip after the first sees the last 73 generated frames (19 latent
frames) as motion. FramePack compresses them to a fixed, small number of tokens, so every clip costs the same.
This benchmark measures, for clips 1..N, three ways of giving the DiT its history:

* ``framepack``: the model as released (19 latent frames, compressed 1x/2x/4x);
* ``window``: the same 19 latent frames uncompressed, every frame patchified at full resolution (1x2x2);
* ``history``: every latent frame generated so far, uncompressed, up to a token cap (what fits).

The first clip has no motion in any arm (the official ``drop_first_motion``). The uncompressed arms reuse the
model's own stages (``prepare`` without motion, then the motion latents through ``patch_embedding`` with the
motion type embedding and RoPE at t = -n..-1, then ``run_blocks`` and the head), so they differ from FramePack
only in the motion tokens.

Each point (arm, clip) runs in a fresh process: it builds the model, runs one warm-up denoising step (excluded),
then times ``--repeats`` CFG steps (a conditional and an unconditional forward, ``time.perf_counter``; CUDA
events on GPU) and reports the median, the peak memory (peak RSS of that process on CPU, with the RSS before the
first forward; ``torch.cuda.max_memory_allocated`` on GPU) and the token count. The per-clip cost is
``steps x step time`` plus the VAE and audio costs of the sampler split; the cumulative cost sums it over clips.

The sampler's cost split comes from a real run of :class:`s2vbench.model.pipeline.S2VPipeline` (random weights)
for a few clips: DiT forwards (2 per step with CFG), VAE encode (reference, motion buffer) and decode, and the
audio front end (a wav2vec2 of the preset's width, random weights).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from ..model import PreparedSequence, WanS2V, get_preset
from ..model.cli import path_arg
from ..model.config import PRESETS, Preset, WanS2VConfig
from ..model.device import check_device
from ..model.pipeline import (
    RANDOM_VAE_DIM,
    GenerationConfig,
    S2VInputs,
    S2VPipeline,
    audio_input_from_states,
    flush_denormals,
    random_text_embedding,
    wav2vec2_frames,
)
from ..model.rope import rope_cos_sin
from ..model.sequence import MOTION, SequenceLayout, rope_positions, sequence_layout
from ..model.vae import WanVAE, WanVAEConfig
from .analytic import forward_flops, parameter_count
from .measure import peak_rss_bytes
from .results import Metric, Record, ResultsError, ResultsLog, atomic_save_figure, atomic_write_text

ARMS = ("framepack", "window", "history")
ARM_TITLES = {"framepack": "FramePack (as released)", "window": "uncompressed 19-frame window",
              "history": "uncompressed full history"}
KIND_STEP = "longform_step"
KIND_SPLIT = "longform_split"
DEFAULT_CPU_TOKEN_CAP = 12_000
"""Largest sequence the full-history arm runs on CPU (above it a step takes minutes on one core)."""


# ---- geometry -----------------------------------------------------------------------------------------
def motion_latent_frames(arm: str, clip: int, cfg: WanS2VConfig, latent_frames: int) -> int:
    """Latent frames of history the DiT sees in clip ``clip`` (from 1): none in the first clip; 19 for
    FramePack and the window (the 73-frame buffer, zero-filled at the start); (clip - 1) x F for the history."""
    if clip == 1:
        return 0
    return (clip - 1) * latent_frames if arm == "history" else cfg.motion_latent_frames


def arm_layout(arm: str, clip: int, cfg: WanS2VConfig, latent_frames: int, h: int, w: int) -> SequenceLayout:
    n = motion_latent_frames(arm, clip, cfg, latent_frames)
    if arm == "framepack" or n == 0:
        return sequence_layout(cfg, latent_frames, h, w, with_motion=n > 0)
    base = sequence_layout(cfg, latent_frames, h, w, with_motion=False)
    _, ph, pw = cfg.patch_size
    return SequenceLayout(base.grid, ((n, h // ph, w // pw),))


# ---- one DiT forward per arm --------------------------------------------------------------------------
def append_uncompressed_motion(model: WanS2V, prep: PreparedSequence, motion: torch.Tensor) -> PreparedSequence:
    """``prep`` (prepared without motion) with ``motion`` [B, C, n, h, w] appended as n full-resolution frames of
    tokens: the shared 1x2x2 patch embedding, the motion type embedding, RoPE times -n..-1 on the full grid."""
    n = motion.shape[2]
    grid = prep.layout.grid
    layout = SequenceLayout(grid, ((n, grid[1], grid[2]),))
    tokens = model.patch_embedding(motion).flatten(2).transpose(1, 2).to(prep.tokens.dtype)
    tokens = tokens + model.trainable_cond_mask.weight[MOTION].to(tokens.dtype)
    pos = rope_positions(model.cfg, SequenceLayout(grid, ()))
    t, y, x = torch.meshgrid(torch.arange(-n, 0), torch.arange(grid[1]), torch.arange(grid[2]), indexing="ij")
    pos = torch.cat([pos, torch.stack([t.reshape(-1), y.reshape(-1), x.reshape(-1)], 1)])
    cos, sin = rope_cos_sin(pos.to(motion.device), model.cfg.head_dim, model.cfg.rope_theta)
    return dataclasses.replace(prep, tokens=torch.cat([prep.tokens, tokens], dim=1), cos=cos, sin=sin, layout=layout)


def run_prepared(model: WanS2V, prep: PreparedSequence) -> torch.Tensor:
    """The blocks and the head on a prepared sequence: the rest of the model's forward."""
    hidden = model.run_blocks(prep.tokens, prep, prep.layout.noisy)
    return model.unpatchify(model.head_tokens(hidden[:, :prep.layout.noisy], prep), prep.layout.grid)


def uncompressed_forward(model: WanS2V, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                         ref_latents: torch.Tensor, audio_input: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    """The model's forward with ``motion`` [B, C, n, h, w] given as n full-resolution frames of tokens instead of
    FramePack's compressed ones."""
    prep = model.prepare(x, t, context, ref_latents, audio_input, None, None)
    return run_prepared(model, append_uncompressed_motion(model, prep, motion))


@dataclasses.dataclass(frozen=True)
class PointSpec:
    """One (arm, clip) point, as sent to its worker process."""

    preset: str
    arm: str
    clip: int
    warmup: int
    repeats: int
    threads: int
    device: str


def _current_rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def measure_point(spec: PointSpec) -> dict[str, Any]:
    """Build the preset's model and time ``repeats`` CFG steps of this point, after ``warmup`` untimed forwards."""
    torch.set_num_threads(spec.threads)
    preset = get_preset(spec.preset)
    cfg, clip = preset.model, preset.clip
    dev = torch.device(spec.device)
    torch.manual_seed(0)
    with torch.device(dev):
        model = WanS2V(cfg).eval().requires_grad_(False)
    f, h, w = clip.latent_frames, clip.latent_height, clip.latent_width
    g = torch.Generator().manual_seed(1)

    def rnd(*shape):
        return torch.randn(*shape, generator=g).to(dev)

    x, ref = rnd(1, cfg.in_dim, f, h, w), rnd(1, cfg.in_dim, 1, h, w)
    ctx, neg = rnd(1, clip.text_tokens, cfg.text_dim), rnd(1, clip.text_tokens, cfg.text_dim)
    audio = rnd(1, cfg.audio_layers, cfg.audio_dim, clip.infer_frames)
    n = motion_latent_frames(spec.arm, spec.clip, cfg, f)
    motion = rnd(1, cfg.in_dim, n, h, w) if n else None
    t = torch.tensor([500.0], device=dev)

    def forward(context, audio_input):
        if motion is None or spec.arm == "framepack":
            return model(x, t, context, ref, audio_input, motion)
        return uncompressed_forward(model, x, t, context, ref, audio_input, motion)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    rss_before = _current_rss()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    steps: list[float] = []
    forwards: list[float] = []
    cpu: list[float] = []
    with torch.no_grad(), flush_denormals(dev.type == "cpu"):
        for _ in range(spec.warmup):
            forward(ctx, audio)
        for _ in range(spec.repeats):
            sync()
            c0 = time.process_time()
            t0 = time.perf_counter()
            forward(ctx, audio)
            sync()
            t1 = time.perf_counter()
            forward(neg, audio * 0)      # the CFG branch: negative prompt, silent audio
            sync()
            t2 = time.perf_counter()
            steps.append(t2 - t0)
            cpu.append(time.process_time() - c0)
            forwards += [t1 - t0, t2 - t1]
    out = {"step_times": steps, "step_cpu_times": cpu, "forward_times": forwards, "rss_before": rss_before, "peak_rss": peak_rss_bytes(),
           "motion_frames": n}
    if dev.type == "cuda":
        out["cuda_peak"] = torch.cuda.max_memory_allocated(dev)
    return out


POINT_RESULT_PREFIX = "LONGFORM_POINT_RESULT "


def _point_main(spec_json: str) -> int:
    """Entry of a point's process: measure, print the result as one JSON line (``python -m`` of this module)."""
    spec = PointSpec(**json.loads(spec_json))
    try:
        status, payload = "ok", measure_point(spec)
    except torch.cuda.OutOfMemoryError as e:
        status, payload = "oom", str(e)
    print(POINT_RESULT_PREFIX + json.dumps({"status": status, "payload": payload}), flush=True)
    return 0


def run_in_fresh_process(spec: PointSpec, timeout: float = 1800.0) -> tuple[str, Any]:
    """Run :func:`measure_point` in a new Python process, so its peak RSS is this point's alone."""
    cmd = [sys.executable, "-m", "s2vbench.bench.longform", json.dumps(dataclasses.asdict(spec))]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.threads), "MKL_NUM_THREADS": str(spec.threads)}
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return "error", f"the point's process ran past {timeout:.0f} s and was stopped"
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(POINT_RESULT_PREFIX):
            result = json.loads(line[len(POINT_RESULT_PREFIX):])
            return result["status"], result["payload"]
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    killed = " (killed: out of memory?)" if proc.returncode in (-9, 137) else ""
    return "error", f"the point's process exited with code {proc.returncode}{killed}: {' | '.join(tail)}"


# ---- the sampler's cost split -------------------------------------------------------------------------
def audio_frontend_for(cfg: WanS2VConfig, device: str):
    """A random-weight wav2vec2 whose hidden states fit the preset: wav2vec2-large-xlsr-53's architecture
    (24 layers of 1024) when audio_dim is 1024, else the tiny test architecture at the preset's width."""
    from transformers import Wav2Vec2Config

    from ..model.audio_frontend import AudioFrontend, tiny_wav2vec2_config

    layers = cfg.audio_layers - 1
    if cfg.audio_dim == 1024:
        config = Wav2Vec2Config(hidden_size=1024, num_hidden_layers=layers, num_attention_heads=16,
                                intermediate_size=4096, do_stable_layer_norm=True, feat_extract_norm="layer",
                                conv_bias=True)
        what = f"wav2vec2-large-xlsr-53 architecture ({layers} x 1024), random weights"
    else:
        config = tiny_wav2vec2_config(cfg.audio_dim, layers)
        what = f"small wav2vec2 ({layers} x {cfg.audio_dim}), random weights"
    return AudioFrontend(config=config, device=device), what


def measure_split(preset: Preset, clips: int, steps: int, vae_dim: int, device: str, audio: bool = True
                  ) -> dict[str, Any]:
    """One real pipeline run: seconds per stage and per clip, DiT forward count and times."""
    cfg, clip = preset.model, preset.clip
    torch.manual_seed(0)
    with torch.device(device):
        model = WanS2V(cfg).eval().requires_grad_(False)
        vae = WanVAE(WanVAEConfig(dim=vae_dim)).eval().requires_grad_(False)
    h, w = 8 * clip.latent_height, 8 * clip.latent_width
    infer = clip.infer_frames
    seconds = (clips - 1) * infer / 16 + 0.5 * infer / 16
    samples = int(seconds * 16000)
    result: dict[str, Any] = {"clips": clips, "steps": steps, "vae_dim": vae_dim, "size": [h, w],
                              "infer_frames": infer, "audio_seconds": seconds}
    g = torch.Generator().manual_seed(0)
    if audio:
        frontend, what = audio_frontend_for(cfg, device)
        wav = (torch.randn(samples, generator=g) * 0.1).numpy()
        with flush_denormals(device == "cpu"):
            frontend.hidden_states(wav[:16000])                  # warm-up, excluded
            t0 = time.perf_counter()
            states = frontend.hidden_states(wav)
            result["audio_time"] = time.perf_counter() - t0
        result["audio_model"] = what
        del frontend
    else:
        states = torch.randn(cfg.audio_layers, wav2vec2_frames(samples), cfg.audio_dim, generator=g)
    audio_input, covered = audio_input_from_states(states, infer)
    inputs = S2VInputs(torch.rand(3, h, w, generator=g) * 2 - 1, audio_input, covered,
                       random_text_embedding(cfg, clip.text_tokens, 0), random_text_embedding(cfg, clip.text_tokens, 1))
    per_clip: list[dict[str, float]] = []
    current: dict[str, float] = defaultdict(float)
    forward_times: list[float] = []

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    @contextlib.contextmanager
    def stage(name: str):
        sync()
        t0 = time.perf_counter()
        yield
        sync()
        current[name] += time.perf_counter() - t0
        if name == "vae_decode":      # the last stage of a clip; the next clip's motion encode is charged to it
            per_clip.append(dict(current))
            current.clear()

    starts: list[float] = []

    def before_forward(*_) -> None:   # a hook returning anything but None would replace the forward's inputs
        sync()
        starts.append(time.perf_counter())

    def after_forward(*_) -> None:
        sync()
        forward_times.append(time.perf_counter() - starts.pop())

    pre = model.register_forward_pre_hook(before_forward)
    post = model.register_forward_hook(after_forward)
    try:
        S2VPipeline(model, vae).generate(inputs, GenerationConfig(infer_frames=infer, steps=steps, num_clips=clips),
                                         stage)
    finally:
        pre.remove()
        post.remove()
    if current:                       # motion encodes after the last decode belong to the clip that uses them
        per_clip.append(dict(current))
    result["per_clip"] = per_clip
    result["forward_times"] = forward_times
    return result


# ---- the run ------------------------------------------------------------------------------------------
def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def _spread(xs: list[float]) -> dict[str, float]:
    return {"median": _median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def _check_resumable(log: ResultsLog, step_config: dict[str, Any], split_config: dict[str, Any] | None) -> None:
    """Refuse to resume a results file of another benchmark or of other settings: its points would be kept as
    if they had been measured with these, and the report would mix the two."""
    other = sorted({r.kind for r in log.records} - {KIND_STEP, KIND_SPLIT})
    if other:
        raise ResultsError(f"{log.path} holds {', '.join(other)} records, not a longform run's; pick another "
                           f"output folder")
    for r in log.records:
        want = step_config if r.kind == KIND_STEP else split_config
        diff = [f"{k}={r.config.get(k)!r} there, {v!r} now" for k, v in (want or {}).items() if r.config.get(k) != v]
        if diff:
            raise ResultsError(f"{log.path} holds a longform run with other settings (point {r.name!r}: "
                               f"{'; '.join(diff)}); resume it with the same options, or pick another output folder")


def run_longform(preset_name: str, out: Path, clips: int = 10, warmup: int = 1, repeats: int = 2, steps: int = 40,
                 token_cap: int | None = None, threads: int = 1, device: str = "cpu", split_clips: int = 2,
                 split_steps: int = 2, vae_dim: int | None = None, split_audio: bool = True,
                 in_process: bool = False, progress: bool = True) -> ResultsLog:
    """Measure every (arm, clip) point and the sampler split into ``out/results.json`` (resumable), then write
    ``out/report.md`` and ``out/longform.png``."""
    preset = get_preset(preset_name)
    cfg, clip = preset.model, preset.clip
    if device == "cpu":
        check_host_memory(preset_name)
    if token_cap is None:
        token_cap = DEFAULT_CPU_TOKEN_CAP if device == "cpu" else None
    vae_dim = RANDOM_VAE_DIM.get(preset_name, 96) if vae_dim is None else vae_dim
    base_config = {"preset": preset_name, "latent_frames": clip.latent_frames, "latent_height": clip.latent_height,
                   "latent_width": clip.latent_width, "infer_frames": clip.infer_frames,
                   "text_tokens": clip.text_tokens, "warmup": warmup, "repeats": repeats, "steps": steps,
                   "threads": threads, "device": device, "token_cap": token_cap, "in_process": in_process}
    try:
        log = ResultsLog(out / "results.json")
    except ResultsError as e:
        raise ResultsError(f"{e}; longform resumes the results.json of its output folder: repair or move it, or "
                           f"pick another output folder") from None
    split_config = {**{k: v for k, v in base_config.items() if k != "steps"}, "clips": split_clips,
                    "steps": split_steps, "vae_dim": vae_dim}
    _check_resumable(log, base_config, split_config if split_clips > 0 else None)
    env = dict(log.environment)
    env["load_average"] = _loadavg()
    log.environment = env

    def say(msg: str) -> None:
        if progress:
            print(msg, flush=True)

    for arm in ARMS:
        capped = False
        for k in range(1, clips + 1):
            name = f"{arm}/clip{k:02d}"
            if log.done(name):
                capped = capped or "over_cap" in next(r for r in log.records if r.name == name).tags
                continue
            layout = arm_layout(arm, k, cfg, clip.latent_frames, clip.latent_height, clip.latent_width)
            flops = forward_flops(cfg, layout, clip.infer_frames).total
            config = {**base_config, "arm": arm, "clip": k, "tokens_noisy": layout.noisy, "tokens_ref": layout.ref,
                      "tokens_motion": layout.motion,
                      "motion_latent_frames": motion_latent_frames(arm, k, cfg, clip.latent_frames)}
            counted = [Metric("tokens", layout.total, "tokens", "counted from the sequence layout (noisy + ref + "
                              "motion)"),
                       Metric("forward_flops", flops, "FLOP", "analytic (bench/analytic.forward_flops)",
                              status="predicted")]
            if arm == "history" and (capped or (token_cap is not None and layout.total > token_cap)):
                capped = True
                log.append(Record(KIND_STEP, name, config, counted + [
                    Metric("step_time", None, "s", f"not run: {layout.total} tokens exceed the cap of {token_cap}",
                           status="not_measured")], tags=["over_cap"],
                    notes=f"sequence of {layout.total} tokens is over the token cap {token_cap}"))
                say(f"{name}: {layout.total} tokens, over the cap {token_cap}, not run")
                continue
            spec = PointSpec(preset_name, arm, k, warmup, repeats, threads, device)
            if in_process:
                torch.set_num_threads(threads)
                status, payload = "ok", measure_point(spec)
            else:
                status, payload = run_in_fresh_process(spec)
            if status != "ok":
                capped = status == "oom"
                log.append(Record(KIND_STEP, name, config, counted + [
                    Metric("step_time", None, "s", f"failed: {payload}", status="not_measured")],
                    tags=[status], notes=str(payload)))
                say(f"{name}: {status}: {payload}")
                continue
            st = payload["step_times"]
            metrics = counted + [
                Metric("step_time", _median(st), "s", f"median of {repeats} CFG steps (conditional + unconditional "
                       f"forward, no grad, float32) after {warmup} untimed warm-up forward(s), time.perf_counter"
                       f"{' around CUDA synchronize' if device != 'cpu' else ''}", stats=_spread(st)),
                Metric("forward_time", _median(payload["forward_times"]), "s", "median of the single forwards of "
                       "those steps", stats=_spread(payload["forward_times"])),
                Metric("step_cpu_time", _median(payload["step_cpu_times"]), "s", "median CPU time (time.process_time, "
                       "all threads of the point's process) of the same steps: under contention from other "
                       "processes wall time grows, CPU time much less", stats=_spread(payload["step_cpu_times"])),
                Metric("dit_cost_per_clip", steps * _median(st), "s", f"{steps} sampling steps x the median step "
                       "time", status="predicted"),
            ]
            if device == "cpu" and in_process:
                metrics.append(Metric("forward_memory", None, "MiB", "not measured: --in-process shares one "
                                      "process (and its peak RSS) between points", status="not_measured"))
            elif device == "cpu":
                metrics += [Metric("peak_rss", payload["peak_rss"] / 2**20, "MiB", "peak RSS (ru_maxrss) of a fresh "
                                   "process that built the model and ran this point"),
                            Metric("rss_before", payload["rss_before"] / 2**20, "MiB", "RSS of that process after "
                                   "building the model and inputs, before the first forward"),
                            Metric("forward_memory", (payload["peak_rss"] - payload["rss_before"]) / 2**20, "MiB",
                                   "peak RSS minus RSS before the first forward")]
            else:
                metrics.append(Metric("forward_memory", payload["cuda_peak"] / 2**20, "MiB",
                                      "torch.cuda.max_memory_allocated over the steps (model weights included)"))
            log.append(Record(KIND_STEP, name, config, metrics))
            say(f"{name}: {layout.total} tokens, step {_median(st):.3f} s, {metrics[-1].name} "
                f"{_fmt(metrics[-1].value, '.0f')} MiB")

    if split_clips > 0 and not log.done("split"):
        say(f"sampler split: {split_clips} clips x {split_steps} steps through S2VPipeline ...")
        torch.set_num_threads(threads)
        split = measure_split(preset, split_clips, split_steps, vae_dim, device, audio=split_audio)
        fwd = split["forward_times"]
        metrics = [Metric("dit_forwards", len(fwd), "1", "DiT forwards counted by hooks (2 per step with CFG)"),
                   Metric("dit_forward_time", _median(fwd), "s", "median of all DiT forwards of the run",
                          stats=_spread(fwd))]
        if "audio_time" in split:
            metrics.append(Metric("audio_time", split["audio_time"], "s", f"one wav2vec2 pass over "
                                  f"{split['audio_seconds']:.2f} s of audio ({split['audio_model']}), after a "
                                  f"1 s warm-up pass"))
        for i, c in enumerate(split["per_clip"], start=1):
            for stage_name in ("vae_encode", "dit_sampling", "vae_decode"):
                metrics.append(Metric(f"clip{i}.{stage_name}", c.get(stage_name, 0.0), "s",
                                      "time.perf_counter around the stage in S2VPipeline.generate"))
        log.append(Record(KIND_SPLIT, "split", {**base_config, **{k: v for k, v in split.items()
                                                                  if k not in ("per_clip", "forward_times")}},
                          metrics, notes=f"random weights; VAE base width {vae_dim} (released: 96)"))
    write_report(log, out)
    return log


# ---- report -------------------------------------------------------------------------------------------
def _val(rec: Record, name: str) -> float | None:
    try:
        return rec.metric(name).value
    except KeyError:
        return None


def clip_costs(log: ResultsLog, steps: int) -> dict[str, list[dict[str, Any]]]:
    """Per arm, per clip: tokens, step time, memory, and the per-clip and cumulative costs (DiT + VAE + audio)."""
    split = next((r for r in log.records if r.kind == KIND_SPLIT), None)
    vae_first = vae_later = audio_share = 0.0
    if split is not None:
        per = {m.name: m.value for m in split.metrics}
        n_clips = split.config["clips"]
        vae_first = per.get("clip1.vae_encode", 0.0) + per.get("clip1.vae_decode", 0.0)
        later = [per.get(f"clip{i}.vae_encode", 0.0) + per.get(f"clip{i}.vae_decode", 0.0)
                 for i in range(2, n_clips + 1)]
        vae_later = _median(later) if later else vae_first
        audio_share = (per.get("audio_time") or 0.0) / n_clips
    table: dict[str, list[dict[str, Any]]] = {}
    for arm in ARMS:
        rows = []
        total = 0.0
        for r in sorted((r for r in log.records if r.kind == KIND_STEP and r.config["arm"] == arm),
                        key=lambda r: r.config["clip"]):
            st = _val(r, "step_time")
            k = r.config["clip"]
            cost = None if st is None else steps * st + (vae_first if k == 1 else vae_later) + audio_share
            total = None if (cost is None or total is None) else total + cost
            rows.append({"clip": k, "tokens": int(_val(r, "tokens")), "step_time": st, "cpu": _val(r, "step_cpu_time"),
                         "memory": _val(r, "forward_memory"), "peak_rss": _val(r, "peak_rss"),
                         "flops": _val(r, "forward_flops"), "cost": cost, "cumulative": total})
        table[arm] = rows
    return table


def _reading(table: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Two sentences computed from the table: the flat arms' ratio and the history arm's growth."""
    def later(arm: str, key: str) -> list[float]:
        return [r[key] for r in table[arm] if r["clip"] >= 2 and r[key] is not None]

    fp_t, win_t = later("framepack", "tokens"), later("window", "tokens")
    fp_c, win_c = later("framepack", "cpu") or later("framepack", "step_time"), \
        later("window", "cpu") or later("window", "step_time")
    hist = [r for r in table["history"] if r["clip"] >= 2]
    ran = [r for r in hist if (r["cpu"] or r["step_time"]) is not None]
    if not (fp_t and win_t and fp_c and win_c and len(hist) >= 2):
        return []
    fp_s, win_s = _median(fp_c), _median(win_c)
    text = (f"From clip 2 on, every FramePack sequence holds {fp_t[0]:,} tokens and every window sequence "
            f"{win_t[0]:,} ({win_t[0] / fp_t[0]:.2f}x); the median step CPU time is {fp_s:.2f} s against "
            f"{win_s:.2f} s ({win_s / fp_s:.1f}x: attention grows with the square of the sequence). The full "
            f"history adds {hist[1]['tokens'] - hist[0]['tokens']:,} tokens per clip")
    if ran:
        last = ran[-1]
        text += (f"; at clip {last['clip']} ({last['tokens']:,} tokens) its step takes "
                 f"{(last['cpu'] or last['step_time']) / fp_s:.1f}x FramePack's")
    capped = [r for r in hist if r["step_time"] is None]
    if capped:
        text += (f", and clips {capped[0]['clip']}-{capped[-1]['clip']} ({capped[0]['tokens']:,} to "
                 f"{capped[-1]['tokens']:,} tokens) were over the cap")
    return ["## Reading", "", text + ".", ""]


def _loadavg() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def _load(values: list[float] | None) -> str:
    return "unknown" if not values else ", ".join(f"{v:.2f}" for v in values)


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def write_plot(table: dict[str, list[dict[str, Any]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    panels = [("tokens", "tokens per clip", axes[0][0]), ("step_time", "CFG step time (s), wall and CPU", axes[0][1]),
              ("memory", "forward memory (MiB)", axes[1][0]), ("cumulative", "cumulative cost (s)", axes[1][1])]
    for key, label, ax in panels:
        for arm, marker in zip(ARMS, ("o", "s", "^")):
            rows = [r for r in table[arm] if r[key] is not None]
            line, = ax.plot([r["clip"] for r in rows], [r[key] for r in rows], marker=marker, label=ARM_TITLES[arm])
            cpu = [r for r in rows if r.get("cpu") is not None]
            if key == "step_time" and cpu:   # CPU time of the same steps: what contention cannot inflate much
                ax.plot([r["clip"] for r in cpu], [r["cpu"] for r in cpu], linestyle=":", color=line.get_color(),
                        label=f"{arm}: CPU time")
        ax.set_xlabel("clip")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    axes[0][1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)


def write_report(log: ResultsLog, out: Path) -> Path:
    from tabulate import tabulate

    steps_rec = next((r for r in log.records if r.kind == KIND_STEP), None)
    if steps_rec is None:
        raise ValueError(f"{log.path} has no {KIND_STEP} records to report")
    c = steps_rec.config
    steps = c["steps"]
    table = clip_costs(log, steps)
    env = steps_rec.environment or log.environment
    title = (f"Long-form cost per clip: {c['preset']} preset, {c['infer_frames']} frames of "
             f"{8 * c['latent_height']}x{8 * c['latent_width']} per clip, on {env.get('device', 'cpu')}")
    write_plot(table, out / "longform.png", title)
    mem_note = ("peak RSS of the point's process minus its RSS before the first forward"
                if c["device"] == "cpu" else "torch.cuda.max_memory_allocated, weights included")
    load_start = env.get("load_average")
    busy = bool(load_start) and load_start[0] > (env.get("cpu_count") or 1)
    generated = (f"Generated {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')} by `s2vbench "
                 f"longform` (git {str(env.get('git_commit'))[:10]}{', dirty tree' if env.get('git_dirty') else ''}). "
                 f"Machine: {env.get('cpu')} ({env.get('cpu_count')} cores), torch {env.get('torch')}, "
                 f"{c['threads']} thread(s) per point. Load average (1, 5, 15 min) when the run started: "
                 f"{_load(load_start)}; when this report was written: {_load(_loadavg())}")
    if busy:
        generated += (f". The load exceeded the {env.get('cpu_count')} cores: other processes shared the CPU, so "
                      f"single points can be slower than their neighbours (each point's min and max are in the "
                      f"results file)")
    arms = ("Arms: **framepack** = the model as released (19 motion latent frames compressed to a fixed token "
            "count); **window** = the same 19 latent frames as uncompressed full-resolution tokens; **history** = "
            "every latent frame generated so far as uncompressed tokens"
            + (f", capped at {c['token_cap']:,} tokens (clips above the cap are not run)" if c["token_cap"] else "")
            + ". Clip 1 has no motion in any arm (official `drop_first_motion`).")
    where = "all points in one process" if c.get("in_process") else "each point in a fresh process"
    method = (f"Step time: median of {c['repeats']} CFG steps (conditional + unconditional forward, no grad, "
              f"float32, random weights) after {c['warmup']} untimed warm-up forward(s), {where}; step CPU is the "
              f"process CPU time of the same steps (wall time well above it means other processes took the CPU). "
              f"Memory: {mem_note}. Cost per clip = {steps} steps x step time + VAE (encode + decode) + the clip's "
              f"share of the audio front end, from the sampler split below; cumulative = sum over clips 1..k.")
    lines = [f"# {title}", "", generated + ".", "", arms, "", method, ""]
    rows = []
    for arm in ARMS:
        for r in table[arm]:
            rows.append([arm, r["clip"], f"{r['tokens']:,}", _fmt(r["flops"] and r["flops"] / 1e9, ",.1f"),
                         _fmt(r["step_time"], ".3f"), _fmt(r["cpu"], ".3f"), _fmt(r["memory"], ",.0f"), _fmt(r["peak_rss"], ",.0f"),
                         _fmt(r["cost"], ",.1f"), _fmt(r["cumulative"], ",.1f")])
    lines += ["## Per clip", "", tabulate(rows, headers=["arm", "clip", "tokens", "GFLOP/forward (analytic)",
                                                         "step (s)", "step CPU (s)", "fwd mem (MiB)", "peak RSS (MiB)",
                                                         "cost/clip (s)", "cumulative (s)"],
                                          tablefmt="github", disable_numparse=True), ""]
    summary = []
    for arm in ARMS:
        measured = [r for r in table[arm] if r["step_time"] is not None and r["clip"] >= 2]
        if not measured:
            continue
        toks = sorted({r["tokens"] for r in table[arm] if r["clip"] >= 2})
        sts = [r["step_time"] for r in measured]
        cpus = [r["cpu"] for r in measured if r["cpu"] is not None]
        cpu_range = f"{min(cpus):.3f} - {max(cpus):.3f} ({max(cpus) / min(cpus):.2f}x)" if cpus else "-"
        summary.append([arm, ", ".join(f"{t:,}" for t in toks[:3]) + (" ..." if len(toks) > 3 else ""),
                        f"{min(sts):.3f} - {max(sts):.3f} ({max(sts) / min(sts):.2f}x)", cpu_range,
                        len(measured), sum(r["step_time"] is None for r in table[arm])])
    lines += ["## Clips 2 and later", "", tabulate(summary, headers=["arm", "tokens per clip",
                                                                      "step time range (s, max/min)",
                                                                      "step CPU range (s, max/min)", "clips run",
                                                                      "clips over cap"],
                                                   tablefmt="github", disable_numparse=True), ""]
    lines += _reading(table)
    split = next((r for r in log.records if r.kind == KIND_SPLIT), None)
    if split is not None:
        per = {m.name: m for m in split.metrics}
        sc = split.config
        srows = []
        fwd = per["dit_forward_time"].value
        for i in range(1, sc["clips"] + 1):
            dit = per[f"clip{i}.dit_sampling"].value
            enc, dec = per[f"clip{i}.vae_encode"].value, per[f"clip{i}.vae_decode"].value
            aud = (per["audio_time"].value / sc["clips"]) if "audio_time" in per else None
            full = 2 * steps * fwd
            parts = [full, enc, dec] + ([aud] if aud is not None else [])
            srows.append([i, f"{dit:.2f}", f"{full:.1f}", f"{enc:.2f}", f"{dec:.2f}", _fmt(aud, ".2f"),
                          f"{100 * full / sum(parts):.1f}%"])
        lines += ["## Sampler cost split", "",
                  f"A real `S2VPipeline.generate` run of {sc['clips']} clips with {sc['steps']} UniPC steps each "
                  f"(random weights, VAE base width {sc['vae_dim']} where the released VAE has 96, "
                  f"{sc['size'][0]}x{sc['size'][1]} pixels, {sc['infer_frames']} frames per clip): "
                  f"{int(per['dit_forwards'].value)} DiT forwards (2 per step with CFG), median "
                  f"{fwd:.3f} s each. `DiT at {steps} steps` = 2 x {steps} x that median. VAE encode covers the "
                  f"reference image (clip 1) and the 73-frame motion buffer the clip after it needs; "
                  f"decode covers [ref or motion | clip] latents. "
                  + (f"Audio: {per['audio_time'].how}, shared evenly over the clips." if "audio_time" in per else
                     "Audio: not measured."), "",
                  tabulate(srows, headers=["clip", f"DiT ({sc['steps']} steps, s)", f"DiT at {steps} steps (s)",
                                           "VAE encode (s)", "VAE decode (s)", "audio (s)", f"DiT share at {steps}"],
                           tablefmt="github", disable_numparse=True), ""]
    lines += ["![cost per clip](longform.png)", "", f"Results: `{log.path.name}` (schema s2vbench.results).", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


# ---- command line -------------------------------------------------------------------------------------
def _device(text: str) -> str:
    """``--device``: cpu, or a CUDA device this machine has, checked before any model is built."""
    dev = check_device(text, "--device", error=argparse.ArgumentTypeError)
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: longform measures on cpu or cuda only")
    return "cpu" if dev.type == "cpu" else text  # one spelling of cpu: the measurements branch on device == "cpu"


def check_host_memory(preset_name: str) -> None:
    """On CPU, refuse a preset whose float32 weights alone (every point builds the model in a process of its
    own, one at a time) would not fit in the memory this machine has available: the kernel's OOM killer, or
    the CPU allocator deep in the first build, would say it minutes later and less clearly."""
    from .sweep import RANK_PROCESS_GIB, host_memory_available

    available = host_memory_available()
    if available is None:
        return
    need = 4 * parameter_count(get_preset(preset_name).model) + RANK_PROCESS_GIB * 2**30
    if need > available:
        raise ValueError(f"preset {preset_name!r} needs at least {need / 2**30:,.1f} GiB of host memory (its float32 "
                         f"weights plus {RANK_PROCESS_GIB:g} GiB a process, before activations), and this machine has "
                         f"{available / 2**30:.1f} GiB available; use --preset tiny or small on CPU, or --device cuda")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .cli import non_negative_int, positive_int

    parser.add_argument("--preset", default="small", choices=sorted(PRESETS), help="model preset (default small)")
    parser.add_argument("--clips", type=positive_int, default=10, help="clips 1..N per arm (default 10)")
    parser.add_argument("--repeats", type=positive_int, default=2, help="timed CFG steps per point (median reported)")
    parser.add_argument("--warmup", type=non_negative_int, default=1,
                        help="untimed forwards per point before the timed steps")
    parser.add_argument("--steps", type=positive_int, default=40, help="sampling steps per clip for the per-clip cost")
    parser.add_argument("--token-cap", type=positive_int, default=None,
                        help=f"largest sequence the history arm runs (default {DEFAULT_CPU_TOKEN_CAP:,} on CPU, "
                             f"none on GPU, where the cap is the first out-of-memory)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads per point on CPU (default 1)")
    parser.add_argument("--device", type=_device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--split-clips", type=non_negative_int, default=2, help="clips of the real pipeline run for "
                        "the sampler split (0 skips it)")
    parser.add_argument("--split-steps", type=positive_int, default=2, help="UniPC steps per clip in that run")
    parser.add_argument("--vae-dim", type=positive_int, default=None, help="random VAE base width in the split "
                        "(default 8 for tiny and small, 96 otherwise)")
    parser.add_argument("--no-audio-model", action="store_true", help="skip the wav2vec2 timing in the split")
    parser.add_argument("--out", type=path_arg, default=None, help="output folder (default runs/longform-<time>); an "
                        "existing results.json there is resumed")
    parser.add_argument("--in-process", action="store_true", help="run every point in this process (faster; no "
                        "per-point CPU memory)")
    parser.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> int:
    from .results import check_output_folder

    out = args.out or Path("runs") / f"longform-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    check_output_folder(out)  # before the first point, not at its first write
    log = run_longform(args.preset, out, clips=args.clips, warmup=args.warmup, repeats=args.repeats, steps=args.steps,
                       token_cap=args.token_cap, threads=args.threads, device=args.device,
                       split_clips=args.split_clips, split_steps=args.split_steps, vae_dim=args.vae_dim,
                       split_audio=not args.no_audio_model, in_process=args.in_process, progress=not args.quiet)
    print(f"results: {log.path}\nreport:  {out / 'report.md'}\nplot:    {out / 'longform.png'}")
    return 0


__all__ = ["ARMS", "PointSpec", "add_arguments", "append_uncompressed_motion", "arm_layout", "clip_costs", "measure_point", "measure_split",
           "motion_latent_frames", "run", "run_longform", "run_prepared", "uncompressed_forward",
           "write_report"]

if __name__ == "__main__":
    raise SystemExit(_point_main(sys.argv[1]))
