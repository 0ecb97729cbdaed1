"""Token-budget resolution bucketing: fit each clip under M tokens, then group clips into equal-cost batches.

A clip of latent frames F and pixel size H x W becomes ``[noisy | ref | motion]`` tokens, counted by
:func:`s2vbench.model.sequence.sequence_layout` (VAE stride 4x8x8, patch 1x2x2, FramePack 1x/2x/4x buckets):
with motion that is (F + 2.5) x (H/16)(W/16), so 704x1024 at 80 frames (F = 20) is 63,360 tokens.

Per clip (:func:`fit_clip`): resize by one scale s (never above 1 unless asked), then centre-crop to the
nearest smaller multiple of 64 pixels on each axis, so the crop removes less than 64 resized pixels per axis
and the aspect ratio is kept up to that rounding. Frames are 4F at the model's 16 fps, F bounded by the
clip's (and its audio's) duration and by the geometry's frame window. Among the shapes that fit M, the one
with the most tokens wins, except that a larger picture within ``fill_tolerance`` of it is preferred (so the
budget buys resolution before length).

Across clips (:func:`plan_buckets`): a greedy facility-location choice of at most ``max_buckets`` shapes
maximising the tokens clips keep (every clip goes to the admissible bucket with the most tokens), then a batch
size per bucket that brings each batch's predicted step cost (a passed-in ``cost(tokens)``, e.g.
``bench.analytic.clip_step_cost``, not the token count) closest to one common target.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..model.config import WanS2VConfig
from ..model.sequence import sequence_layout
from .manifest import ManifestRow


class BucketError(ValueError):
    """A geometry or manifest that cannot be bucketed, with what would fix it."""


@functools.lru_cache(maxsize=4096)
def _per_frame(cfg: WanS2VConfig, lat_h: int, lat_w: int, with_motion: bool) -> tuple[int, int]:
    # Tokens are affine in the latent frame count (noisy grows, ref and motion do not): slope and intercept from
    # the one authoritative layout function rather than a second copy of the formula.
    one = sequence_layout(cfg, 1, lat_h, lat_w, with_motion).total
    two = sequence_layout(cfg, 2, lat_h, lat_w, with_motion).total
    return two - one, 2 * one - two


def clip_tokens(cfg: WanS2VConfig, latent_frames: int, height: int, width: int, with_motion: bool = True) -> int:
    """Total tokens (noisy + ref + motion) of a clip of ``latent_frames`` and ``height`` x ``width`` pixels."""
    if height % 8 or width % 8:
        raise BucketError(f"{height}x{width} pixels is not a multiple of the VAE's 8-pixel stride; use multiples "
                          f"of 64 as the official pipeline does")
    return sequence_layout(cfg, latent_frames, height // 8, width // 8, with_motion).total


def _lcm(values: Sequence[int]) -> int:
    out = 1
    for v in values:
        out = out * v // math.gcd(out, v)
    return out


@dataclass(frozen=True)
class BucketGeometry:
    """What a target clip may look like: the model, the token budget M and the frame window."""

    cfg: WanS2VConfig
    """The model whose sequence layout counts the tokens."""
    max_tokens: int
    """M: the most tokens (noisy + ref + motion) one clip may have."""
    min_latent_frames: int = 1
    """Fewest latent frames F of a target (4F pixel frames); shorter clips are rejected as too short."""
    max_latent_frames: int = 20
    """Most latent frames of a target (20 = the official 80-frame clip)."""
    model_fps: float = 16.0
    """Frame rate the model is trained at; sources are resampled to it (frames = seconds x model_fps)."""
    pixel_multiple: int = 64
    """Target height and width are multiples of this many pixels (64 in the official pipeline)."""
    with_motion: bool = True
    """Targets carry FramePack motion tokens (1.5 frames' worth of tokens)."""
    history_in_clip: bool = False
    """The 73 motion-history frames come out of the clip's own duration (else they are supplied separately)."""
    allow_upscale: bool = False
    """Let a target be larger than its source (off by default: upscaling adds tokens, not information)."""
    cp_degrees: tuple[int, ...] = (1,)
    """Context-parallel degrees the sequence should split over without padding (preferred, not required)."""
    fill_tolerance: float = 0.01
    """A shape within this fraction of the best token count but with a larger picture is preferred."""
    max_crop: float = 0.15
    """Shapes cropping more than this fraction of the resized frame are used only when no other fits."""

    def __post_init__(self) -> None:
        m, p = self.pixel_multiple, self.cfg.patch_size
        if not isinstance(m, int) or m <= 0 or m % (8 * max(p[1], p[2])):
            raise BucketError(f"pixel_multiple={m!r}: must be a positive multiple of {8 * max(p[1], p[2])} "
                              f"(VAE stride 8 x patch {max(p[1], p[2])}); the official pipeline uses 64")
        if self.with_motion and m % 64:
            raise BucketError(f"pixel_multiple={m}: FramePack's 4x projector needs multiples of 64 pixels; use 64 "
                              f"or set with_motion=False")
        if not 1 <= self.min_latent_frames <= self.max_latent_frames:
            raise BucketError(f"frame window [{self.min_latent_frames}, {self.max_latent_frames}] latent frames is "
                              f"empty or starts below 1; pass 1 <= min_latent_frames <= max_latent_frames")
        if self.latent_frames_multiple() != 1:
            raise BucketError(f"patch_size {p}: only a temporal patch of 1 is supported by the bucketer")
        if not self.model_fps > 0:
            raise BucketError(f"model_fps={self.model_fps!r} must be positive (Wan-S2V trains at 16)")
        if any((not isinstance(c, int)) or c < 1 for c in self.cp_degrees):
            raise BucketError(f"cp_degrees={self.cp_degrees!r} must be positive integers")
        if not 0 <= self.fill_tolerance < 1:
            raise BucketError(f"fill_tolerance={self.fill_tolerance!r} must be in [0, 1)")
        if not 0 < self.max_crop <= 1:
            raise BucketError(f"max_crop={self.max_crop!r} must be in (0, 1]")
        smallest = self.tokens(self.min_latent_frames, m, m)
        if self.max_tokens < smallest:
            raise BucketError(f"max_tokens={self.max_tokens} is below the smallest clip the geometry allows "
                              f"({smallest} tokens: {self.min_latent_frames} latent frames of {m}x{m}); raise "
                              f"max_tokens or lower min_latent_frames")

    def latent_frames_multiple(self) -> int:
        return self.cfg.patch_size[0]

    @property
    def cp_multiple(self) -> int:
        """Token counts divisible by this split over every CP degree without padding."""
        return _lcm(self.cp_degrees)

    def tokens(self, latent_frames: int, height: int, width: int) -> int:
        slope, icpt = _per_frame(self.cfg, height // 8, width // 8, self.with_motion)
        return slope * latent_frames + icpt

    def history_frames(self) -> int:
        return self.cfg.motion_frames if (self.with_motion and self.history_in_clip) else 0

    def available_latent_frames(self, row: ManifestRow) -> int:
        """Latent frames the clip can supply at the model's frame rate (audio-limited when its length is known)."""
        seconds = row.seconds if row.audio_seconds is None else min(row.seconds, row.audio_seconds)
        pixel_frames = math.floor(seconds * self.model_fps + 1e-9) - self.history_frames()
        return max(0, pixel_frames // 4)

    def min_seconds(self) -> float:
        return (4 * self.min_latent_frames + self.history_frames()) / self.model_fps

    def row_problem(self, row: ManifestRow) -> str | None:
        """None if the row can be fitted, else why not ("too short: ..." or "too small: ...")."""
        f_avail = self.available_latent_frames(row)
        if f_avail < self.min_latent_frames:
            audio = "" if row.audio_seconds is None else f" (audio {row.audio_seconds:g} s)"
            return (f"too short: {row.seconds:.2f} s{audio} gives {f_avail} latent frames at {self.model_fps:g} fps, "
                    f"the model needs {self.min_latent_frames} ({self.min_seconds():.2f} s); drop the clip or lower "
                    f"min_latent_frames")
        m = self.pixel_multiple
        if not self.allow_upscale and min(row.width, row.height) < m:
            return (f"too small: {row.width}x{row.height} has no {m}-pixel-multiple shape without upscaling; drop "
                    f"the clip or allow upscaling")
        return None


@dataclass(frozen=True)
class ClipTarget:
    """The shape one clip is trained at and what fitting it cost."""

    latent_frames: int
    """F: latent frames of the noisy clip."""
    height: int
    """Target height in pixels (a multiple of the geometry's pixel_multiple)."""
    width: int
    """Target width in pixels."""
    tokens: int
    """Sequence length: noisy + ref + motion tokens."""
    scale: float
    """Resize factor applied to the source before the centre crop (>1 is an upscale)."""
    crop_loss: float
    """Fraction of the resized frame's area cropped away, in [0, 1)."""
    aspect_error: float
    """|target aspect / source aspect - 1| (dimensionless)."""

    @property
    def frames(self) -> int:
        """Pixel frames at the model's frame rate (4F)."""
        return 4 * self.latent_frames

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.latent_frames, self.height, self.width)

    @property
    def upscaled(self) -> bool:
        return self.scale > 1 + 1e-12


def target_for_shape(row: ManifestRow, shape: tuple[int, int, int], tokens: int) -> ClipTarget:
    """Resize ``row`` so it covers ``shape`` (the smallest such scale), centre-crop, and report the losses."""
    f, h, w = shape
    scale = max(h / row.height, w / row.width)
    crop = 1.0 - (h * w) / (scale * scale * row.height * row.width)
    aspect = abs((w / h) / (row.width / row.height) - 1.0)
    return ClipTarget(f, h, w, tokens, scale, max(0.0, crop), aspect)


def _spatial_candidates(row: ManifestRow, geom: BucketGeometry, max_scale: float) -> list[tuple[int, int]]:
    """(H, W) multiples of m reachable by one resize (scale <= max_scale) and a crop of < m pixels per axis,
    smallest first: the staircase of floor(s H / m) m x floor(s W / m) m as s grows."""
    m, H, W = geom.pixel_multiple, row.height, row.width
    pairs = set()
    for k in range(1, int(max_scale * H) // m + 1):  # breakpoints where s H crosses a multiple of m
        pairs.add((k * m, (k * W // H) * m))
    for k in range(1, int(max_scale * W) // m + 1):
        pairs.add(((k * H // W) * m, k * m))
    return sorted((h, w) for h, w in pairs if h >= m and w >= m and max(h / H, w / W) <= max_scale + 1e-12)


def fit_clip(row: ManifestRow, geom: BucketGeometry) -> ClipTarget:
    """The best target of one clip under the geometry's M (see the module docstring for the rule)."""
    problem = geom.row_problem(row)
    if problem is not None:
        raise BucketError(f"row {row.path!r}: {problem}")
    f_hi = min(geom.max_latent_frames, geom.available_latent_frames(row))
    cands = []
    for h, w in _spatial_candidates(row, geom, max_scale=4.0 if geom.allow_upscale else 1.0):
        slope, icpt = _per_frame(geom.cfg, h // 8, w // 8, geom.with_motion)
        f = min(f_hi, (geom.max_tokens - icpt) // slope)
        if f < geom.min_latent_frames:
            break  # candidates only grow from here
        cands.append((slope * f + icpt, h, w, f, target_for_shape(row, (f, h, w), 0).crop_loss))
    if not cands:
        raise BucketError(f"row {row.path!r}: no {geom.pixel_multiple}-pixel shape of {geom.min_latent_frames}+ "
                          f"latent frames fits {geom.max_tokens} tokens; raise max_tokens")
    # Preferences, each applied only if something survives it: little crop, then no CP padding.
    cands = [c for c in cands if c[4] <= geom.max_crop] or cands
    cands = [c for c in cands if c[0] % geom.cp_multiple == 0] or cands
    best = max(c[0] for c in cands)
    ok = [c for c in cands if c[0] >= (1 - geom.fill_tolerance) * best]
    tokens, h, w, f, _ = max(ok, key=lambda c: (c[1] * c[2], -c[4], c[0]))
    return target_for_shape(row, (f, h, w), tokens)


def fit_fixed(row: ManifestRow, geom: BucketGeometry, shape: tuple[int, int, int]) -> ClipTarget | None:
    """The single-fixed-resolution baseline: every clip resized (up if need be) to cover ``shape`` and cropped;
    None when the clip is too short for its frames."""
    if geom.available_latent_frames(row) < shape[0]:
        return None
    return target_for_shape(row, shape, geom.tokens(*shape))


def admissible(rows_h: np.ndarray, rows_w: np.ndarray, rows_f: np.ndarray, shape: tuple[int, int, int],
               geom: BucketGeometry) -> np.ndarray:
    """[N] bool: which clips can take ``shape`` with one resize (no upscale unless allowed) and a crop of less
    than pixel_multiple resized pixels per axis, and have its frames. Integer arithmetic, no rounding doubt."""
    f, h, w = shape
    m = geom.pixel_multiple
    h_bound = h * rows_w >= w * rows_h  # the height sets the scale (s = h / H); the width is cropped
    crop_ok = np.where(h_bound, h * rows_w - w * rows_h < m * rows_h, w * rows_h - h * rows_w < m * rows_w)
    if geom.allow_upscale:
        scale_ok = np.maximum(h / rows_h, w / rows_w) <= 4.0
    else:
        scale_ok = (h <= rows_h) & (w <= rows_w)
    return crop_ok & scale_ok & (f <= rows_f)


def crop_losses(rows_h: np.ndarray, rows_w: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """[N] crop loss of each clip resized to cover ``shape`` (the same figure as ClipTarget.crop_loss)."""
    _, h, w = shape
    scale = np.maximum(h / rows_h, w / rows_w)
    return np.maximum(0.0, 1.0 - (h * w) / (scale * scale * rows_h * rows_w))


@dataclass(frozen=True)
class Bucket:
    """One clip shape and the batch size its clips are grouped in."""

    index: int
    """Position in BucketPlan.buckets."""
    latent_frames: int
    """F of every clip in the bucket."""
    height: int
    """Pixel height."""
    width: int
    """Pixel width."""
    tokens: int
    """Tokens of one clip (noisy + ref + motion)."""
    batch_size: int
    """Clips per batch (one shape per batch)."""
    clip_cost: float
    """Predicted step cost of one clip (the passed-in cost function's unit, FLOPs for clip_step_cost)."""
    clips: int
    """Clips assigned to it."""
    cp_padding: int
    """Tokens the sequence is padded by to split over the largest CP degree."""

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.latent_frames, self.height, self.width)

    @property
    def batch_cost(self) -> float:
        """Predicted cost of one full batch."""
        return self.batch_size * self.clip_cost

    @property
    def label(self) -> str:
        return f"{4 * self.latent_frames}f {self.height}x{self.width}"


@dataclass
class BucketPlan:
    """Clips, their buckets and targets, for one manifest under one geometry."""

    geometry: BucketGeometry
    """What targets may look like."""
    rows: list[ManifestRow]
    """The clips, in manifest order."""
    buckets: list[Bucket]
    """Chosen shapes with their batch sizes."""
    bucket_of: list[int]
    """Bucket index of each clip."""
    targets: list[ClipTarget]
    """Each clip's target in its bucket."""
    naive: list[ClipTarget]
    """Each clip's own best target (the per-clip baseline)."""
    cost_target: float
    """The batch cost every bucket's batch size aims at."""
    overflow: int = 0
    """Buckets added beyond max_buckets because some clips fitted none of the chosen shapes."""
    notes: list[str] = field(default_factory=list)
    """Caveats found while planning."""

    def utilisation(self) -> tuple[float, dict[int, float]]:
        """(overall, per bucket) real tokens / (slots x M), with slots = ceil(clips / b) x b per bucket."""
        m = self.geometry.max_tokens
        per, real_all, slots_all = {}, 0, 0
        for b in self.buckets:
            slots = -(-b.clips // b.batch_size) * b.batch_size
            per[b.index] = b.clips * b.tokens / (slots * m) if slots else 0.0
            real_all += b.clips * b.tokens
            slots_all += slots
        return (real_all / (slots_all * m) if slots_all else 0.0), per

    def batch_cost_spread(self) -> float:
        """(max - min) / mean of the full-batch costs over buckets, weighted by nothing (dimensionless)."""
        costs = [b.batch_cost for b in self.buckets]
        return (max(costs) - min(costs)) / (sum(costs) / len(costs))


MAX_BATCH = 64
"""The largest batch size a bucket is given (the cheapest clips' buckets get the largest batches)."""


def _batch_size(clip_cost: float, target: float, max_batch: int) -> int:
    best = min(range(1, max_batch + 1), key=lambda b: (abs(b * clip_cost / target - 1), b))
    return best


def plan_buckets(rows: Sequence[ManifestRow], geom: BucketGeometry, cost: Callable[[int], float],
                 max_buckets: int = 16, base_batch: int = 1, max_batch: int = MAX_BATCH) -> BucketPlan:
    """Choose at most ``max_buckets`` shapes and a batch size for each.

    Every clip first gets its own best target; the candidate shapes are those targets. A greedy pass adds the
    shape that most raises the tokens clips keep (each clip takes the admissible chosen shape with the most
    tokens); clips left with none get their own shape as an extra bucket (counted in ``overflow``). The batch
    size of each bucket is the b in [1, max_batch] that brings b x cost(tokens) closest to base_batch x the
    largest bucket's clip cost."""
    if not rows:
        raise BucketError("no clips to bucket: the manifest has no usable rows")
    if max_buckets < 1 or base_batch < 1 or max_batch < base_batch:
        raise BucketError(f"max_buckets={max_buckets}, base_batch={base_batch}, max_batch={max_batch}: need "
                          f"max_buckets >= 1 and 1 <= base_batch <= max_batch")
    rows = list(rows)
    naive = [fit_clip(r, geom) for r in rows]
    cand_shapes = sorted({t.shape for t in naive})
    cand_tokens = np.array([geom.tokens(*s) for s in cand_shapes], dtype=np.int64)
    rh = np.array([r.height for r in rows], dtype=np.int64)
    rw = np.array([r.width for r in rows], dtype=np.int64)
    rf = np.array([min(geom.max_latent_frames, geom.available_latent_frames(r)) for r in rows], dtype=np.int64)
    shape_index = {s: j for j, s in enumerate(cand_shapes)}
    own = np.array([shape_index[t.shape] for t in naive])
    crop = np.stack([crop_losses(rh, rw, s) for s in cand_shapes], axis=1)  # [N, S]
    ok = np.stack([admissible(rh, rw, rf, s, geom) for s in cand_shapes], axis=1)
    ok &= crop <= geom.max_crop
    ok[np.arange(len(rows)), own] = True  # a clip's own best shape is always open to it
    value = np.where(ok, cand_tokens[None, :], 0)  # [N, S] tokens a clip keeps in each candidate shape
    current = np.zeros(len(rows), dtype=np.int64)
    chosen: list[int] = []
    while len(chosen) < max_buckets:
        gains = np.maximum(value - current[:, None], 0).sum(axis=0)
        gains[chosen] = -1
        pick = int(np.argmax(gains))
        if gains[pick] <= 0:
            break
        chosen.append(pick)
        current = np.maximum(current, value[:, pick])
    overflow = 0
    while (current == 0).any():  # clips no chosen shape admits: cover the most of them per extra bucket
        open_ = (current == 0)
        pick = int(np.argmax((value[open_] > 0).sum(axis=0)))
        chosen.append(pick)
        current = np.maximum(current, value[:, pick])
        overflow += 1
    chosen_value = value[:, chosen]
    choice = _argbest(chosen_value, crop[:, chosen])  # ties (equal tokens) go to the smaller crop loss
    counts = np.bincount(choice, minlength=len(chosen))
    keep = [j for j in range(len(chosen)) if counts[j] > 0]
    remap = {j: k for k, j in enumerate(keep)}
    shapes = [cand_shapes[chosen[j]] for j in keep]
    clip_costs = [float(cost(geom.tokens(*s))) for s in shapes]
    target = base_batch * max(clip_costs)
    buckets = []
    for k, (s, c) in enumerate(zip(shapes, clip_costs)):
        tokens = geom.tokens(*s)
        pad = (-tokens) % max(geom.cp_degrees)
        buckets.append(Bucket(k, s[0], s[1], s[2], tokens, _batch_size(c, target, max_batch), c,
                              int(counts[keep[k]]), pad))
    bucket_of = [remap[int(j)] for j in choice]
    targets = [target_for_shape(r, buckets[b].shape, buckets[b].tokens) for r, b in zip(rows, bucket_of)]
    notes = []
    if overflow:
        notes.append(f"{overflow} bucket(s) beyond max_buckets={max_buckets} were needed for clips that fit no "
                     f"chosen shape")
    return BucketPlan(geom, rows, buckets, bucket_of, targets, naive, target, overflow, notes)


def _argbest(value: np.ndarray, crop: np.ndarray) -> np.ndarray:
    """Per row, the column with the most tokens, ties to the smallest crop loss."""
    best = value.max(axis=1, keepdims=True)
    masked = np.where(value == best, crop, np.inf)
    return masked.argmin(axis=1)


__all__ = ["MAX_BATCH", "Bucket", "BucketError", "BucketGeometry", "BucketPlan", "ClipTarget", "admissible", "clip_tokens",
           "fit_clip", "fit_fixed", "plan_buckets", "target_for_shape"]
