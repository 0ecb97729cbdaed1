"""``s2vbench plan`` (validate one configuration and show its mesh, shards and prediction) and
``s2vbench predict`` (the table the paper's 100 s -> 12 s claim implies, and scaling curves). Nothing launches."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..model.cli import path_arg
from ..model.config import ConfigError, WanS2VConfig, get_preset
from ..model.sequence import InputError, SequenceLayout, sequence_layout
from .analytic import parameter_count
from .perfmodel import (
    PlanError,
    Prediction,
    Strategy,
    fmt_gib,
    predict_inference,
    predict_training,
)
from .profiles import HardwareProfile, ProfileError, load_profile
from .results import atomic_save_figure, has_type

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


MAX_TOKENS = 10_000_000
"""Tokens per clip that plan and predict accept. No real clip comes near: it is 224x the paper's 44,544-token clip,
about 13,000 frames at 1024x768 (13 minutes at 16 fps in one clip, where Wan-S2V makes long videos clip by clip),
and a prediction at this length still takes seconds and a few hundred MB. The bound is what stops an absurd
frame count or size with one line, before the model builds the clip's [tokens, 3] RoPE positions for its op count
(400 billion frames ran out of memory there; 4 million frames planned 3 billion tokens per clip)."""
MAX_RANKS = 2 ** 20
"""Ranks (GPUs) that plan and predict accept: far more than any GPU cluster built holds, and still finite work (plan
prints one row per rank: about a minute at this count)."""


@dataclass(frozen=True)
class Workload:
    """What one iteration trains on."""

    preset: str
    """Model preset."""
    frames: int
    """Video frames per clip (a multiple of 4)."""
    width: int
    """Pixel width."""
    height: int
    """Pixel height."""
    global_batch: int
    """Clips per iteration."""
    with_motion: bool = True
    """Whether clips carry FramePack motion tokens."""

    def model(self) -> tuple[WanS2VConfig, SequenceLayout]:
        cfg = get_preset(self.preset).model
        if self.frames <= 0 or self.frames % 4:
            raise PlanError(f"frames={self.frames}: Wan-S2V clips have 4F video frames (F latent frames); "
                            f"use a positive multiple of 4 such as 48 or 80")
        for what, px in (("width", self.width), ("height", self.height)):
            if px <= 0 or px % 8:
                raise PlanError(f"{what}={px} must be a positive multiple of 8 (the VAE's spatial stride); the "
                                f"official pipeline uses multiples of 64")
        try:
            lay = sequence_layout(cfg, self.frames // 4, self.height // 8, self.width // 8, self.with_motion)
        except InputError as exc:
            raise PlanError(str(exc)) from None
        if lay.total > MAX_TOKENS:
            raise PlanError(f"frames={self.frames} of width={self.width} x height={self.height} is {lay.total:,} "
                            f"tokens per clip, above the limit of {MAX_TOKENS:,} (224x the paper's clip); use fewer "
                            f"frames or a smaller size, e.g. 48 frames of 1024x768")
        return cfg, lay


def check_ranks(ranks: int, what: str) -> None:
    """Refuse more than ``MAX_RANKS`` ranks, naming ``what`` set them."""
    if ranks > MAX_RANKS:
        raise PlanError(f"{what} gives {ranks:,} ranks, above the limit of {MAX_RANKS:,} (more GPUs than any cluster "
                        f"holds)")


def preset_clip(preset: str) -> tuple[int, int, int]:
    """(frames, width, height) of the preset's own clip, plan's and predict's workload where none is given, as it
    is `scaling`'s: a preset is benchmarked on its clip (the 14b's is the paper's 48 frames of 1024x768; tiny's
    model at the paper's 44,544 tokens is no workload anyone runs)."""
    clip = get_preset(preset).clip
    return clip.infer_frames, 8 * clip.latent_width, 8 * clip.latent_height


def clip_note(work: Workload) -> str:
    """Which clip geometry ``work`` is, and why: the preset's own (the default) or one given instead."""
    frames, width, height = preset_clip(work.preset)
    if (work.frames, work.width, work.height) == (frames, width, height):
        return f"the {work.preset} preset's own clip, the default"
    return f"as given; the {work.preset} preset's own clip is {frames} frames of {width}x{height}"


def parse_size(size: str) -> tuple[int, int]:
    """"1024x768" -> (width 1024, height 768)."""
    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise PlanError(f"size {size!r}: write WIDTHxHEIGHT in pixels, e.g. 1024x768") from None
    return w, h


def prediction_row(name: str, p: Prediction) -> list:
    return [name, p.strategy.world_size, p.global_batch, f"{p.time:.2f}", f"{p.compute:.2f}", f"{p.exposed_comm:.2f}",
            f"{p.other:.2f}", f"{p.samples_per_s_per_gpu:.4f}", f"{p.mfu:.2f}", fmt_gib(p.memory_total), p.fit]


PREDICTION_HEADERS = ["configuration", "GPUs", "clips/iter", "s/iter", "compute s", "exposed comm s", "other s",
                      "samples/s/GPU", "MFU", "GiB/rank", "fits"]


# ---- plan ---------------------------------------------------------------------------------------------


_PLAN_FORMAT = "see s2vbench/bench/sweeps/plan_14b_usp.toml for the format"

_PLAN_TYPES = {"preset": (str, "a preset name such as \"14b\""), "frames": (int, "a whole number of video frames"),
               "size": (str, "\"WIDTHxHEIGHT\" in pixels, e.g. \"1024x768\""),
               "width": (int, "a whole number of pixels"), "height": (int, "a whole number of pixels"),
               "global_batch": (int, "a whole number of clips per iteration"),
               "with_motion": (bool, "true or false"), "hardware": (str, "a profile name or JSON file"),
               "parallel": (dict, "a [parallel] table")}
_PARALLEL_TYPES = {"dp_shard": int, "ulysses": int, "ring": int, "dp_replicate": int, "grad_accum": int,
                   "ac": bool, "offload_activations": bool, "dtype": str}


def _plan_value(path: Path, key: str, value, kind: type, what: str):
    # TOML gives typed values: check them rather than convert (bool("false") is True, int([48]) fails unnamed)
    if not has_type(value, kind):
        raise PlanError(f"{path}: {key} = {value!r} must be {what}; {_PLAN_FORMAT}")
    return value


def _plan_hardware(path: Path, value: str) -> str:
    """The plan's ``hardware``: a shipped profile's name as it is; a profile file (a name with a suffix, as
    ``load_profile`` tells them apart) relative to the plan's folder, so that the plan means the same from any
    directory. A file that is only where the current directory would put it is refused, not read from there."""
    given = Path(value).expanduser()
    if not given.suffix:
        return value
    where = given if given.is_absolute() else path.parent / given
    if not where.is_file():
        import os

        hint = (f"; {value} exists relative to the current directory: write hardware = "
                f"{os.path.relpath(given.resolve(), path.parent.resolve())!r} or an absolute path"
                if given.is_file() else "")
        raise PlanError(f"{path}: hardware = {value!r}: no file {where} (a relative path in a plan is read from "
                        f"the plan's folder){hint}")
    return str(where)


def load_plan(path: Path) -> tuple[Workload, Strategy, str]:
    """A plan TOML: top-level workload keys, a [parallel] table and ``hardware`` (a shipped profile's name, or a
    profile file, read relative to the plan's folder)."""
    if not path.is_file():
        raise PlanError(f"no plan file {path}; {_PLAN_FORMAT}")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PlanError(f"{path} is not valid TOML ({exc}); {_PLAN_FORMAT}") from None
    if not doc:
        raise PlanError(f"{path} is empty: a plan needs at least a [parallel] table of its degrees; {_PLAN_FORMAT}")
    unknown = set(doc) - set(_PLAN_TYPES)
    if unknown:
        raise PlanError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(_PLAN_TYPES)}")
    for key, (kind, what) in _PLAN_TYPES.items():
        if key in doc:
            _plan_value(path, key, doc[key], kind, what)
    if "size" in doc:
        if "width" in doc or "height" in doc:
            raise PlanError(f"{path}: give either size or width and height, not both (size = {doc['size']!r}, "
                            f"width = {doc.get('width')!r}, height = {doc.get('height')!r})")
        try:
            width, height = parse_size(doc["size"])
        except PlanError as exc:
            raise PlanError(f"{path}: {exc}") from None
    else:
        width, height = doc.get("width"), doc.get("height")
    global_batch = doc.get("global_batch", 1)
    if global_batch < 1:
        raise PlanError(f"{path}: global_batch = {global_batch} must be at least 1 (clips per iteration)")
    preset = doc.get("preset", "14b")
    try:
        clip = preset_clip(preset)
    except ConfigError as exc:
        raise PlanError(f"{path}: {exc}") from None
    work = Workload(preset, doc.get("frames", clip[0]), clip[1] if width is None else width,
                    clip[2] if height is None else height, global_batch, doc.get("with_motion", True))
    try:  # the preset, frames and size, checked here so that the error names the file
        work.model()
    except (PlanError, ConfigError) as exc:
        raise PlanError(f"{path}: {exc}") from None
    par = doc.get("parallel", {})
    if not par:  # without degrees a plan would silently be one rank; one rank is planned by saying so
        raise PlanError(f"{path}: no [parallel] degrees: a plan says how the job is split, e.g. [parallel] "
                        f"ulysses = 8 (dp_shard = 1 for one rank); {_PLAN_FORMAT}")
    fields = set(Strategy.__dataclass_fields__)
    if set(par) - fields:
        raise PlanError(f"{path}: unknown [parallel] keys {sorted(set(par) - fields)}; known: {sorted(fields)}")
    for key, value in par.items():
        kind = _PARALLEL_TYPES.get(key)
        if kind is None:  # a field added to Strategy later: its own checks apply
            continue
        _plan_value(path, f"[parallel] {key}", value, kind, {int: "a positive integer", bool: "true or false",
                                                              str: "a string"}[kind])
        if kind is int and value < 1:
            raise PlanError(f"{path}: [parallel] {key} = {value} must be a positive integer")
    if par.get("dtype", "bfloat16") not in ("bfloat16", "float32"):
        raise PlanError(f"{path}: [parallel] dtype = {par['dtype']!r}: choose \"bfloat16\" or \"float32\"")
    st = Strategy(**par)
    try:
        check_ranks(st.world_size, f"[parallel] dp_replicate x dp_shard x ring x ulysses = {st.dp_replicate} x "
                                   f"{st.dp_shard} x {st.ring} x {st.ulysses}")
    except PlanError as exc:
        raise PlanError(f"{path}: {exc}") from None
    return work, st, _plan_hardware(path, doc.get("hardware", "h100-sxm"))


def describe_plan(work: Workload, st: Strategy, hw: HardwareProfile) -> str:
    from tabulate import tabulate

    cfg, lay = work.model()
    pred = predict_training(cfg, lay, st, hw, work.global_batch)
    cp = st.cp
    local = -(-lay.total // cp)
    lines = [(f"workload: {work.preset}, {work.frames} frames of {work.width}x{work.height} ({clip_note(work)}), "
             f"{lay.total:,} tokens per clip (noisy {lay.noisy:,} + ref {lay.ref:,} + motion {lay.motion:,}), "
             f"{work.global_batch} clip(s) per iteration"),
             (f"mesh: {f'dp_replicate {st.dp_replicate} x ' if st.dp_replicate > 1 else ''}dp_shard {st.dp_shard} x "
              f"ring {st.ring} x ulysses {st.ulysses} = {st.world_size} ranks on {-(-st.world_size // hw.gpus_per_node)} "
              f"node(s) of {hw.gpus_per_node} ({hw.name}); FSDP shards over "
              + (f"each group of {st.shard_group_size} consecutive ranks, replicated across the {st.dp_replicate} groups "
                 f"(HSDP)" if st.dp_replicate > 1 else f"all {st.world_size}")
              + f"; AC {'on' if st.ac else 'off'}; {st.dtype}"),
             (f"sequence: padded to {local * cp:,} tokens ({local * cp - lay.total} padding), {local:,} per "
             f"context-parallel rank"), ""]
    rows = []
    shard = parameter_count(cfg) / st.shard_group_size
    for rank in range(st.world_size):
        dp, rest = divmod(rank, cp)  # replica-major: the data-parallel index is replica x dp_shard + shard
        ring, uly = divmod(rest, st.ulysses)
        chunk = ring * st.ulysses + uly
        start, end = chunk * local, (chunk + 1) * local
        pad = max(0, end - max(start, lay.total))
        replica = [dp // st.dp_shard] if st.dp_replicate > 1 else []
        rows.append([rank, rank // hw.gpus_per_node, *replica, dp, ring, uly,
                     f"[{start:,}, {min(end, lay.total):,})", pad, f"{shard / 1e6:,.1f}"])
    head = ["rank", "node", *(["replica"] if st.dp_replicate > 1 else []), "dp", "ring", "ulysses", "tokens",
            "padding", "param shard (M)"]
    lines.append(tabulate(rows, head, tablefmt="github"))
    lines += ["", "predicted memory per rank (GiB): " + ", ".join(f"{k} {fmt_gib(v)}" for k, v in pred.memory.items())
              + f"; peak {fmt_gib(pred.memory_total)}"
              + (f" in the {pred.peak_phase} (the weights and optimizer state plus what that phase holds: the "
                 f"parts do not all peak together)" if pred.peak_phase else "")
              + f" of {fmt_gib(hw.memory_capacity)}"
              + {"NO": "  ** DOES NOT FIT **", "tight": "  (a tight fit: within the model's error)"}.get(pred.fit, ""),
              (f"predicted time per iteration: {pred.time:.2f} s = compute {pred.compute:.2f} + exposed communication "
              f"{pred.exposed_comm:.2f} + other {pred.other:.2f}; MFU {pred.mfu:.2f}; "
              f"{pred.samples_per_s_per_gpu:.4f} samples/s/GPU"),
              "communication per kind (s, total / exposed): " + ", ".join(
                  f"{k} {pred.comm_total[k]:.3f}/{pred.comm_exposed[k]:.3f}" for k in pred.comm_total)]
    lines += [f"note: {n}" for n in pred.notes]
    lines.append("(predicted, not measured: " + _profile_caveat(hw) + ")")
    return "\n".join(lines)


def _profile_caveat(hw: HardwareProfile) -> str:
    assumed = sorted(k for k, v in hw.sources.items() if v.startswith("assumed") or "(assumed)" in v)
    return f"profile {hw.name}; assumed figures: {', '.join(assumed) or 'none'}"


# ---- predict: the claim table -------------------------------------------------------------------------


def usp_degrees(gpus: int, heads: int, gpus_per_node: int, min_ring: int = 1) -> tuple[int, int] | None:
    """(ulysses, ring) for one clip over ``gpus`` GPUs with USP, as the scaling curves, the inference prediction
    and the claim table all split it: Ulysses inside a node (its all-to-alls need the node's bandwidth), as wide
    as the heads allow, and ring across nodes (its K/V exchange hides behind attention). ``min_ring`` asks for at
    least that many ring ranks (the claim table's USP row, beside its Ulysses-only row); None where no split has
    them."""
    widest = min(gpus_per_node, gpus // min_ring)
    fits = [u for u in range(1, widest + 1) if heads % u == 0 and gpus % u == 0]
    return (fits[-1], gpus // fits[-1]) if fits else None


def claim_configurations(gpus: int, heads: int, gpus_per_node: int) -> list[tuple[str, Strategy, int]]:
    """The two readings of the paper's baseline and the context-parallel configurations, on ``gpus`` GPUs."""
    configs = [
        ("A: FSDP, 1 clip/GPU, AC", Strategy(gpus, ac=True), gpus),
        ("A: FSDP, 1 clip/GPU, no AC", Strategy(gpus, ac=False), gpus),
        ("B: FSDP, 1 clip/GPU, activation offload", Strategy(gpus, ac=False, offload_activations=True), gpus),
        ("CP: FSDP + Ulysses, 1 clip, AC", Strategy(1, gpus, 1, ac=True), 1),
        ("CP: FSDP + Ulysses, 1 clip, no AC", Strategy(1, gpus, 1, ac=False), 1),
        ("CP: FSDP + ring, 1 clip, AC", Strategy(1, 1, gpus, ac=True), 1),
    ]
    usp = usp_degrees(gpus, heads, gpus_per_node, min_ring=2)
    if usp is not None and usp[0] > 1:  # with Ulysses 1 it would be the ring row again
        u, r = usp
        configs.append((f"CP: FSDP + USP u{u}xr{r}, 1 clip, AC", Strategy(1, u, r, ac=True), 1))
    configs.append((f"CP: FSDP + Ulysses, {gpus} clips by accumulation, AC",
                    Strategy(1, gpus, 1, ac=True, grad_accum=gpus), gpus))
    return configs


def claim_table(work: Workload, gpus: int, hw: HardwareProfile) -> tuple[list[list], list[tuple[str, Prediction]]]:
    cfg, lay = work.model()
    preds = []
    for name, st, gb in claim_configurations(gpus, cfg.num_heads, hw.gpus_per_node):
        try:
            preds.append((name, predict_training(cfg, lay, st, hw, gb)))
        except PlanError as exc:
            print(f"skipped {name}: {exc}", file=sys.stderr)
    if not preds:  # an empty table is no answer
        raise PlanError(f"none of the configurations can be predicted on {gpus} GPUs (the reasons are above); "
                        f"pick a GPU count they fit, such as 8")
    return [prediction_row(n, p) for n, p in preds], preds


def scaling_curves(work: Workload, hw: HardwareProfile, gpus: list[int]) -> dict[str, list[tuple[int, Prediction]]]:
    """Predicted curves with USP (Ulysses inside a node, ring across nodes):
    strong: 64 clips per iteration, 8-way context parallel per clip, data parallel across groups;
    weak: one clip per 8 GPUs; both with FSDP over all ranks, and as HSDP (FSDP inside each 8-GPU group,
    replicated across the groups); sequence: one clip over all GPUs."""
    cfg, lay = work.model()
    out: dict[str, list[tuple[int, Prediction]]] = {"strong (64 clips)": [], "strong HSDP (64 clips)": [],
                                                    "weak (1 clip / 8 GPUs)": [], "weak HSDP (1 clip / 8 GPUs)": [],
                                                    "sequence (1 clip)": []}

    def add(curve: str, n: int, st: Strategy, global_batch: int) -> None:
        # a clip split over more ranks than it has tokens leaves ranks with only padding, which a real job
        # refuses: such a point is off the curve (a short clip's curve ends early)
        if st.cp <= lay.total:
            out[curve].append((n, predict_training(cfg, lay, st, hw, global_batch)))

    cu, cr = usp_degrees(8, cfg.num_heads, hw.gpus_per_node)  # the strong and weak curves' clip over 8 GPUs
    for n in gpus:
        if n >= 8:
            cp_groups = n // 8
            if 64 % cp_groups == 0:
                add("strong (64 clips)", n, Strategy(cp_groups, cu, cr, ac=True, grad_accum=64 // cp_groups), 64)
                add("strong HSDP (64 clips)", n,
                    Strategy(1, cu, cr, ac=True, grad_accum=64 // cp_groups, dp_replicate=cp_groups), 64)
            add("weak (1 clip / 8 GPUs)", n, Strategy(cp_groups, cu, cr, ac=True), cp_groups)
            add("weak HSDP (1 clip / 8 GPUs)", n, Strategy(1, cu, cr, ac=True, dp_replicate=cp_groups), cp_groups)
        u, r = usp_degrees(n, cfg.num_heads, hw.gpus_per_node)
        add("sequence (1 clip)", n, Strategy(1, u, r, ac=True), 1)
    return out


def plot_curves(curves: dict[str, list[tuple[int, Prediction]]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, pts in curves.items():
        if not pts:
            continue
        n = [g for g, _ in pts]
        thr = [p.global_batch / p.time for _, p in pts]
        # strong and weak curves of one sharding coincide per clip: strong ones dashed and hollow, so both show
        style = {"ls": "--", "marker": "s", "mfc": "none", "ms": 8} if name.startswith("strong") else {"marker": "o"}
        ax1.plot(n, thr, label=name, **style)
        ax1.plot(n, [thr[0] * g / n[0] for g in n], ls=":", color=ax1.lines[-1].get_color(), alpha=0.6)
        ax2.plot(n, [p.exposed_comm / p.time for _, p in pts], label=name, **style)
    ax1.set(xscale="log", yscale="log", xlabel="GPUs", ylabel="clips/s (dotted: ideal)", title="throughput")
    ax2.axhline(0.1, color="grey", ls="--", lw=0.8)
    ax2.set(xscale="log", xlabel="GPUs", ylabel="exposed communication / step time",
            title="communication stops hiding above the dashed line")
    for ax in (ax1, ax2):
        ax.set_xticks([g for g, _ in next(iter(v for v in curves.values() if v))])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.legend(fontsize=8)
    fig.suptitle(title + " (predicted)")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def _records(preds: list[tuple[str, Prediction]], hw: HardwareProfile, work: Workload):
    from .results import Metric, Record

    recs = []
    for name, p in preds:
        how = f"perfmodel on profile {hw.name}"
        metrics = [Metric("step_time", p.time, "s", how, "predicted",
                          {"compute": p.compute, "exposed_comm": p.exposed_comm, "other": p.other}),
                   Metric("samples_per_s_per_device", p.samples_per_s_per_gpu, "samples/s", how, "predicted"),
                   Metric("mfu", p.mfu, "1", how, "predicted"),
                   Metric("memory_per_rank", p.memory_total / 2 ** 30, "GiB", how, "predicted",
                          {k: v / 2 ** 30 for k, v in p.memory.items()})]
        recs.append(Record("prediction", f"{hw.name}/{name}", {"workload": work.__dict__, "strategy":
                                                               p.strategy.__dict__, "global_batch": p.global_batch},
                           metrics, tags=["predicted"], notes="; ".join(p.notes)))
    return recs


@dataclass
class ClaimSection:
    """One profile's part of ``predict``'s answer, computed whole before anything is printed or written."""

    hw: HardwareProfile
    rows: list[list]
    """The claim table's rows."""
    preds: list[tuple[str, Prediction]]
    """The claim table's configurations and predictions."""
    curves: dict[str, list[tuple[int, Prediction]]] = field(default_factory=dict)
    """Scaling curves (for a report only)."""
    inference: Prediction | None = None
    """One clip's inference on the table's GPUs (for a report only)."""


REPORT_GPU_COUNTS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
"""The scaling curves' GPU counts."""


def claim_section(work: Workload, gpus: int, hw: HardwareProfile, report: bool) -> ClaimSection:
    rows, preds = claim_table(work, gpus, hw)
    section = ClaimSection(hw, rows, preds)
    if report:
        section.curves = scaling_curves(work, hw, REPORT_GPU_COUNTS)
        cfg, lay = work.model()
        u, r = usp_degrees(gpus, cfg.num_heads, hw.gpus_per_node)
        section.inference = predict_inference(cfg, lay, Strategy(1, u, r, ac=False), hw)
    return section


def claim_log(out: Path):
    """The report's predictions.json, opened (and an existing file that is not a results file refused) before
    anything is computed or written."""
    from .results import ResultsLog, check_output_folder

    check_output_folder(out, "--report")
    return ResultsLog(out / "predictions.json", environment={"kind": "prediction"}, resume=False)


def write_claim(log, work: Workload, gpus: int, hardware: list[str], sections: list[ClaimSection]) -> Path:
    """predictions.md (the claim table per profile and scaling curves), PNGs and predictions.json (``log``, from
    :func:`claim_log`) into the log's folder, from ``sections`` computed beforehand, so that nothing here can fail
    on the input half-way through."""
    from tabulate import tabulate

    from .results import atomic_write_text

    out = log.path.parent
    lines = [f"# Predicted: {work.preset}, {work.frames} frames of {work.width}x{work.height}, {gpus} GPUs", "",
             ("Every figure here is **predicted** by `s2vbench/bench/perfmodel.py`, not measured. Regenerate with "
             f"`s2vbench predict --preset {work.preset} --frames {work.frames} --size {work.width}x{work.height} "
             f"--gpus {gpus} --hw {','.join(hardware)} --report {out}`."), ""]
    records = []
    for sec in sections:
        hw = sec.hw
        records += _records(sec.preds, hw, work)
        lines += [f"## {hw.name}", "", tabulate(sec.rows, PREDICTION_HEADERS, tablefmt="github"), "",
                  f"({_profile_caveat(hw)})", ""]
        for n, p in sec.preds:
            lines += [f"- {n}: {note}" for note in p.notes]
        png = plot_curves(sec.curves, out / f"scaling-{hw.name}.png", f"{work.preset} on {hw.name}")
        rows = []
        for cname, pts in sec.curves.items():
            for g, p in pts:
                rows.append([cname, g, p.global_batch, p.strategy.label, f"{p.time:.2f}",
                             f"{p.global_batch / p.time:.3f}", f"{p.exposed_comm / p.time:.0%}",
                             fmt_gib(p.memory_total), p.fit])
        lines += ["", f"### Scaling to 512 GPUs on {hw.name} (USP: Ulysses inside a node, ring across nodes)", "",
                  f"![scaling]({png.name})", "",
                  tabulate(rows, ["curve", "GPUs", "clips/iter", "strategy", "s/iter", "clips/s",
                                  "exposed comm share", "GiB/rank", "fits"], tablefmt="github"), ""]
        inf = sec.inference
        lines += [f"Inference, one clip (40 steps x 2 CFG forwards) on {gpus} GPUs: {inf.time:.1f} s predicted "
                  f"(compute {inf.compute:.1f}, exposed communication {inf.exposed_comm:.1f}, other {inf.other:.1f}); "
                  + "; ".join(inf.notes) + ".", ""]
    log.extend(records)
    path = out / "predictions.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


# ---- command line -------------------------------------------------------------------------------------


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=path_arg, help="a plan TOML (see s2vbench/bench/sweeps/plan_14b_usp.toml)")
    p.add_argument("--hw", default=None, help="hardware profile name or JSON (default: the file's, else h100-sxm)")


def run_plan(args: argparse.Namespace) -> int:
    # errors (PlanError, ProfileError, ConfigError: ValueErrors) reach cli.main, which prints them as one line;
    # those that the plan file's values cause name the file
    work, st, hw_name = load_plan(args.config)
    try:
        hw = load_profile(args.hw or hw_name)
    except ProfileError as exc:
        raise (exc if args.hw else ProfileError(f"{args.config}: hardware = {hw_name!r}: {exc}")) from None
    try:
        text = describe_plan(work, st, hw)
    except PlanError as exc:  # the [parallel] degrees do not fit the model or the batch
        raise PlanError(f"{args.config}: {exc}") from None
    print(text)
    return 0


def add_predict_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="14b")
    p.add_argument("--frames", type=int, default=None,
                   help="video frames per clip (default: the preset's clip's, 48 for 14b)")
    p.add_argument("--size", default=None,
                   help="WIDTHxHEIGHT in pixels (default: the preset's clip's, 1024x768 for 14b)")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--hw", default="h100-sxm", help="hardware profile(s), comma-separated")
    p.add_argument("--report", type=path_arg, default=None, help="also write predictions.md, plots and JSON here")


def run_predict(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    # everything is checked and computed before the first table prints or the first file is written, so a bad
    # value never leaves a partial or empty answer; errors reach cli.main, which prints them as one line (exit 2)
    if args.gpus < 1:
        raise PlanError(f"--gpus {args.gpus}: predict needs at least 1 GPU, e.g. --gpus 8")
    check_ranks(args.gpus, f"--gpus {args.gpus}")
    frames, width, height = preset_clip(args.preset)
    if args.size is not None:
        width, height = parse_size(args.size)
    work = Workload(args.preset, frames if args.frames is None else args.frames, width, height, args.gpus)
    names = [h.strip() for h in args.hw.split(",") if h.strip()]
    if not names:
        raise PlanError(f"--hw {args.hw!r} names no hardware profile; pass one or more, comma-separated, e.g. "
                        f"--hw h100-sxm,h200")
    profiles = [load_profile(name) for name in names]
    given: dict[str, str] = {}
    for name, hw in zip(names, profiles):
        # a profile's name keys its records, its section and its plot, so a second one would duplicate the first's
        # or overwrite its scaling PNG
        if hw.name in given:
            raise PlanError(f"--hw names profile {hw.name!r} twice ({given[hw.name]!r} and {name!r}); pass each "
                            f"profile once (two calibrations of one device need different names)")
        given[hw.name] = name
    _cfg, lay = work.model()
    log = claim_log(args.report) if args.report is not None else None  # a bad folder fails before the work
    sections = [claim_section(work, args.gpus, hw, args.report is not None) for hw in profiles]
    for sec in sections:
        print(f"{work.preset}: {work.frames} frames of {width}x{height} ({clip_note(work)}) = {lay.total:,} tokens "
              f"per clip, {args.gpus} GPUs, profile {sec.hw.name} (predicted)")
        print(tabulate(sec.rows, PREDICTION_HEADERS, tablefmt="github"))
        for n, p in sec.preds:
            for note in p.notes:
                print(f"  {n}: {note}")
        print(f"({_profile_caveat(sec.hw)})\n")
    if log is not None:
        print(write_claim(log, work, args.gpus, names, sections))
    return 0


__all__ = ["MAX_RANKS", "MAX_TOKENS", "ClaimSection", "Workload", "add_plan_arguments", "add_predict_arguments",
           "check_ranks", "claim_configurations", "claim_log", "claim_section", "claim_table", "clip_note",
           "describe_plan", "load_plan", "parse_size", "preset_clip", "run_plan", "run_predict", "scaling_curves",
           "usp_degrees", "write_claim"]
