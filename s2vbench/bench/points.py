"""Sweep points: what one measurement runs (preset, GPU count, strategy, degrees, numerics)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass

from ..model import ClipShape, clip_layout, get_preset, sequence_layout
from ..parallel import ParallelConfig
from ..parallel.local_attention import BACKENDS as LOCAL_BACKENDS
from .results import is_int

STRATEGIES = ("single", "fsdp", "ulysses", "ring", "usp")
"""single: one rank; fsdp: data parallel with sharding; ulysses / ring: context parallel; usp: both."""
DTYPES = ("float32", "bfloat16")
"""float32, or bfloat16: autocast over float32 master weights (and bf16 FSDP parameters on GPU)."""
TOKEN_TOLERANCE = 0.05
"""A requested token count is met by a clip geometry whose token count is within this relative distance."""


def strategy_degrees(strategy: str, world: int) -> tuple[int, int, int]:
    """(dp_shard, ulysses, ring) of a strategy at a world size."""
    if strategy == "single":
        if world != 1:
            raise ValueError(f"strategy 'single' runs on one rank, not {world}")
        return 1, 1, 1
    if strategy == "fsdp":
        return world, 1, 1
    if strategy == "ulysses":
        return 1, world, 1
    if strategy == "ring":
        return 1, 1, world
    if strategy == "usp":
        u = max(d for d in range(1, math.isqrt(world) + 1) if world % d == 0)
        if u == 1:
            raise ValueError(f"usp needs a world size with two factors > 1, got {world}")
        return 1, world // u, u  # ulysses (inner) gets the larger factor
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")


def _layout_total(preset: str, latent_frames: int, latent_h: int, latent_w: int) -> int | None:
    p = get_preset(preset)
    try:
        return sequence_layout(p.model, latent_frames, latent_h, latent_w, p.clip.with_motion).total
    except ValueError:
        return None


def clip_for_tokens(preset: str, tokens: int, tolerance: float = TOKEN_TOLERANCE) -> ClipShape:
    """The preset's clip reshaped to about ``tokens`` sequence tokens (noisy + ref + motion, ``layout.total``).

    Pixel sizes are multiples of 64 (the official pipeline's, and what FramePack's 4x projector needs). The
    preset's frame count is kept and its aspect ratio approached (the width is the 64-pixel multiple next to
    height x aspect, rounded down or up); only when no such clip comes within ``tolerance`` are other frame
    counts tried (the one nearest the preset's that comes within ``tolerance``). Raises ValueError naming the
    nearest counts when nothing comes within ``tolerance``."""
    if not is_int(tokens) or tokens <= 0:
        raise ValueError(f"tokens must be a positive integer, got {tokens!r}")
    base = get_preset(preset).clip
    aspect = base.latent_width / base.latent_height
    step = 8  # latent units of 64 pixels

    def best_for_frames(frames: int) -> tuple[float, float, int, int, int] | None:
        best = None
        per_frame = tokens / (frames + 1)  # rough: noisy frames + the reference frame, motion ignored
        h_max = max(step, int(16 * math.sqrt(per_frame / aspect) / 8 * 2) + 2 * step)  # twice the estimate
        for h in range(step, h_max + step, step):
            for w in {max(step, step * math.floor(h * aspect / step)), step * math.ceil(h * aspect / step)}:
                total = _layout_total(preset, frames, h, w)
                if total is None:
                    continue
                key = (abs(total - tokens) / tokens, abs(math.log(w / h / aspect)), total, h, w)
                best = key if best is None or key < best else best
        return best

    def clip(frames: int, h: int, w: int) -> ClipShape:
        return dataclasses.replace(base, latent_frames=frames, latent_height=h, latent_width=w)

    kept = best_for_frames(base.latent_frames)
    if kept is not None and kept[0] <= tolerance:
        return clip(base.latent_frames, kept[3], kept[4])
    found = []
    frames = 1
    while True:
        b = best_for_frames(frames)
        if b is not None:
            found.append((b[0], abs(frames - base.latent_frames), frames, b))
        smallest = _layout_total(preset, frames, step, step)
        if smallest is None or smallest > tokens * (1 + tolerance) or frames > 4 * base.latent_frames + tokens:
            break
        frames += 1
    within = sorted((f for f in found if f[0] <= tolerance), key=lambda f: (f[1], f[0], f[2]))
    if within:  # the frame count nearest the preset's, then the closest token count
        _, _, frames, b = within[0]
        return clip(frames, b[3], b[4])
    near = sorted({f[3][2] for f in found}, key=lambda t: abs(t - tokens))[:2]
    smallest = _layout_total(preset, 1, step, step)
    raise ValueError(f"no clip of preset {preset!r} (64-pixel multiples, any frame count) has {tokens} tokens to "
                     f"within {tolerance:.0%}: the nearest have {', '.join(map(str, sorted(near)))} tokens and the "
                     f"smallest clip has {smallest}; ask for a token count near one of those, or give frames, "
                     f"height and width instead")


@dataclass(frozen=True)
class Point:
    """One measured configuration."""

    preset: str
    """Model preset (tiny, small, 14b)."""
    world: int
    """Ranks (GPUs, or single-thread CPU processes)."""
    strategy: str
    """One of STRATEGIES."""
    global_batch: int = 2
    """Clips per optimizer step over all data-parallel ranks (strong scaling keeps it fixed)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step on each rank (gradient accumulation)."""
    scaling: str = "strong"
    """strong: fixed global batch; weak: global batch grows with the data-parallel degree."""
    ac: bool = False
    """Activation checkpointing."""
    dtype: str = "float32"
    """float32, or bfloat16 (autocast, and bf16 FSDP parameters on GPU)."""
    attention_backend: str = "torch"
    """Local attention under context parallelism: torch or triton."""
    steps: int = 3
    """Timed training steps."""
    warmup: int = 1
    """Untimed warm-up steps (counted in the record)."""
    oversubscribed: bool = False
    """More ranks than cores: run for correctness and bytes only, never timed or used for speed-ups."""
    frames: int | None = None
    """Video frames of the clip (a multiple of 4); None keeps the preset's clip."""
    height: int | None = None
    """Pixel height (a multiple of 64 with motion, 16 without); None keeps the preset's."""
    width: int | None = None
    """Pixel width; None keeps the preset's."""
    trace: bool = False
    """Write a Chrome trace (torch.profiler) of one extra step of rank 0."""
    inference: bool = False
    """Also time inference: denoising steps of two no-grad forwards (CFG: prompt + audio, then silent audio)."""
    compile: bool = False
    """``torch.compile`` every transformer block and audio-injector module (before FSDP); the warm-up steps
    absorb compilation, whose time is recorded as its own metric."""
    tokens: int | None = None
    """Requested sequence tokens instead of frames/height/width: the clip is the preset's, resized to the
    nearest valid geometry (see :func:`clip_for_tokens`); the record keeps both counts."""
    dp_replicate: int = 1
    """HSDP replica groups: the strategy runs on world / dp_replicate ranks, replicated this many times
    (gradients all-reduced across the groups); 1 is plain FSDP over all ranks."""

    def clip(self) -> ClipShape:
        """The preset's clip with this point's frames and resolution (or the geometry of its token count)."""
        if self.tokens is not None:
            return clip_for_tokens(self.preset, self.tokens)
        c = get_preset(self.preset).clip
        return dataclasses.replace(
            c, latent_frames=c.latent_frames if self.frames is None else self.frames // 4,
            latent_height=c.latent_height if self.height is None else self.height // 8,
            latent_width=c.latent_width if self.width is None else self.width // 8)

    @property
    def degrees(self) -> tuple[int, int, int]:
        """(dp_shard, ulysses, ring) inside one replica group."""
        if not is_int(self.world) or self.world < 1:  # 0 would divide by zero below, 2.0 name a "w2.0" point
            raise ValueError(f"world (the GPU count) must be a positive integer, got {self.world!r}")
        if not is_int(self.dp_replicate) or self.dp_replicate < 1:
            raise ValueError(f"dp_replicate must be a positive integer, got {self.dp_replicate!r}")
        if self.world % self.dp_replicate:
            raise ValueError(f"dp_replicate {self.dp_replicate} does not divide the {self.world} ranks into equal "
                             f"replica groups; choose a divisor of {self.world}")
        try:
            return strategy_degrees(self.strategy, self.world // self.dp_replicate)
        except ValueError as e:
            if self.dp_replicate == 1:
                raise
            raise ValueError(f"{e} (the ranks of one of {self.dp_replicate} HSDP replica groups of "
                             f"{self.world} ranks)") from None

    @property
    def dp(self) -> int:
        """Data-parallel degree: ranks (groups) that see different clips."""
        return self.parallel_config().dp

    @property
    def batch_per_rank(self) -> int:
        dp = self.dp
        if self.global_batch % dp:
            raise ValueError(f"global batch {self.global_batch} does not split over {dp} data-parallel ranks")
        return self.global_batch // dp

    @property
    def micro_batch(self) -> int:
        if self.grad_accum < 1 or self.batch_per_rank % self.grad_accum:
            raise ValueError(f"{self.batch_per_rank} clips per rank do not split into {self.grad_accum} micro-batches")
        return self.batch_per_rank // self.grad_accum

    @property
    def name(self) -> str:
        dp, u, r = self.degrees
        geometry = "" if (self.frames, self.height, self.width) == (None, None, None) else \
            f"/{self.clip().infer_frames}f-{8 * self.clip().latent_height}x{8 * self.clip().latent_width}"
        if self.tokens is not None:
            c = self.clip()
            geometry = f"/tok{self.tokens}-{c.infer_frames}f-{8 * c.latent_height}x{8 * c.latent_width}"
        accum = f"-ga{self.grad_accum}" if self.grad_accum > 1 else ""
        extra = "".join(f"/{tag}" for tag, on in (("compile", self.compile),
                                                  (self.attention_backend, self.attention_backend != "torch"),
                                                  ("inference", self.inference))
                        if on)
        hsdp = f"rep{self.dp_replicate}-" if self.dp_replicate > 1 else ""
        return (f"{self.preset}/{self.strategy}/w{self.world}/{hsdp}dp{dp}-u{u}-r{r}/{self.dtype}/ac{int(self.ac)}"
                f"/gb{self.global_batch}{accum}{geometry}{extra}")

    def parallel_config(self) -> ParallelConfig:
        dp, u, r = self.degrees
        return ParallelConfig(dp_shard=dp, ulysses=u, ring=r, ac=self.ac, attention_backend=self.attention_backend,
                              dp_replicate=self.dp_replicate)

    def validate(self) -> None:
        get_preset(self.preset)
        if self.scaling not in ("strong", "weak"):
            raise ValueError(f"scaling must be 'strong' or 'weak', got {self.scaling!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        # Checked before anything divides by them: a global batch of 0 used to reach torch on every rank
        for field, low in (("global_batch", 1), ("grad_accum", 1), ("steps", 1), ("warmup", 0)):
            value = getattr(self, field)
            if not is_int(value) or value < low:
                raise ValueError(f"{field} must be an integer >= {low}, got {value!r}")
        for field in ("ac", "trace", "inference", "compile", "oversubscribed"):
            if not isinstance(getattr(self, field), bool):  # "false" would be truthy
                raise ValueError(f"{field} must be true or false, got {getattr(self, field)!r}")
        if self.strategy == "single" and self.dp_replicate != 1:
            raise ValueError("strategy 'single' runs on one rank and cannot be replicated; for replicated data "
                             "parallelism use strategy 'fsdp' with dp_replicate")
        _ = self.micro_batch
        if self.compile and self.warmup < 1:
            raise ValueError("a compiled point needs at least one warm-up step (warmup >= 1) to absorb "
                             "compilation; set warmup = 1 or more")
        if self.tokens is not None and (self.frames, self.height, self.width) != (None, None, None):
            raise ValueError(f"give either tokens ({self.tokens}) or frames/height/width "
                             f"({self.frames}/{self.height}/{self.width}), not both")
        if self.attention_backend not in LOCAL_BACKENDS:
            raise ValueError(f"attention_backend {self.attention_backend!r}: choose one of {LOCAL_BACKENDS}")
        for field in ("frames", "height", "width", "tokens"):
            value = getattr(self, field)
            if value is not None and (not is_int(value) or value <= 0):
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        if self.frames is not None and (self.frames <= 0 or self.frames % 4):
            raise ValueError(f"frames must be a positive multiple of 4 (16 fps, 4 frames per latent), got {self.frames}")
        for what, px in (("height", self.height), ("width", self.width)):
            if px is not None and (px <= 0 or px % 8):
                raise ValueError(f"{what} must be a positive multiple of 8 pixels (the VAE stride), got {px}")
        c = self.clip()
        layout = clip_layout(get_preset(self.preset).model, c)
        self.parallel_config().validate(self.world, get_preset(self.preset).model.num_heads, layout.total)

    @classmethod
    def from_dict(cls, d: dict) -> Point:
        """Inverse of ``to_dict``; ignores derived and extra keys (degrees, trace_dir)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        d = dict(d)
        if "tokens_requested" in d or "model" in d:  # a record's config: its "tokens" is the actual count
            d["tokens"] = d.get("tokens_requested")
        return cls(**{k: v for k, v in d.items() if k in fields})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["degrees"] = dict(zip(("dp_shard", "ulysses", "ring"), self.degrees))
        return d


def default_cpu_points(cores: int, preset: str = "small") -> list[Point]:
    """The main job on CPU: single, fsdp, ulysses and ring at 1 and 2 ranks; usp at 2x2 for correctness and
    bytes (oversubscribed when the machine has fewer than 4 cores)."""
    points = [Point(preset, 1, "single")]
    points += [Point(preset, 2, s, oversubscribed=cores < 2) for s in ("fsdp", "ulysses", "ring")]
    points.append(Point(preset, 4, "usp", oversubscribed=cores < 4, steps=1, warmup=0))
    return points


__all__ = ["DTYPES", "STRATEGIES", "TOKEN_TOLERANCE", "Point", "clip_for_tokens", "default_cpu_points", "strategy_degrees"]
