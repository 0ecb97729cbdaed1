"""The torch.compile and token-count sweep axes."""

import math
import os
from pathlib import Path

import pytest
import torch

from s2vbench.bench.points import TOKEN_TOLERANCE, Point, clip_for_tokens
from s2vbench.bench.scaling import load_sweep, sweep_points
from s2vbench.bench.sweep import point_record
from s2vbench.bench.worker import run_point_rank
from s2vbench.model import clip_layout, get_preset
from s2vbench.parallel.launch import run_ranks

SWEEPS = Path(__file__).resolve().parents[1] / "s2vbench" / "bench" / "sweeps"


def _total(preset, clip):
    return clip_layout(get_preset(preset).model, clip).total


@pytest.mark.parametrize("preset,tokens", [("tiny", 416), ("tiny", 1000), ("tiny", 5000), ("small", 10000),
                                           ("14b", 44544), ("14b", 20000), ("14b", 100000), ("14b", 3000)])
def test_token_counts_become_valid_geometries(preset, tokens):
    base = get_preset(preset).clip
    clip = clip_for_tokens(preset, tokens)
    actual = _total(preset, clip)  # clip_layout validates it (patch and FramePack multiples)
    assert abs(actual - tokens) <= TOKEN_TOLERANCE * tokens
    assert clip.latent_height % 8 == 0 and clip.latent_width % 8 == 0  # 64-pixel multiples
    assert clip.with_motion == base.with_motion and clip.text_tokens == base.text_tokens
    if clip.latent_frames == base.latent_frames:  # the preset's aspect ratio, to within one 64-pixel step
        want = base.latent_width / base.latent_height
        assert abs(clip.latent_width - clip.latent_height * want) <= 8
    else:  # frames change only when no geometry at the preset's frame count is close enough
        for h in range(8, 4 * clip.latent_height + 64, 8):
            for w in range(8, 4 * clip.latent_width + 64, 8):
                if abs(math.log(w / h * base.latent_height / base.latent_width)) < math.log(1 + 8 / h):
                    other = _total(preset, type(clip)(base.latent_frames, h, w, base.text_tokens, base.with_motion))
                    assert abs(other - tokens) > TOKEN_TOLERANCE * tokens, (h, w, other)
    if tokens in (416, 44544):  # the preset's own count gives the preset's own clip
        assert clip == base
    p = Point(preset, 1, "single", tokens=tokens)
    assert p.clip() == clip and p.name.endswith(f"/tok{tokens}-{4 * clip.latent_frames}f-"
                                                f"{8 * clip.latent_height}x{8 * clip.latent_width}")


def test_unreachable_token_counts_and_conflicting_geometry_are_clear_errors():
    with pytest.raises(ValueError, match=r"within 5%.*nearest have .*56.*smallest clip has 56"):
        clip_for_tokens("tiny", 30)
    with pytest.raises(ValueError, match="positive integer"):
        clip_for_tokens("tiny", 0)
    with pytest.raises(ValueError, match="either tokens .* not both"):
        Point("tiny", 1, "single", tokens=1000, frames=8).validate()
    with pytest.raises(ValueError, match="within 5%"):  # a sweep fails on it instead of skipping it
        sweep_points("tiny", [1], ["single"], tokens=[416, 30])
    with pytest.raises(ValueError, match="warm-up"):
        Point("tiny", 1, "single", compile=True, warmup=0).validate()
    with pytest.raises(ValueError, match="attention_backend 'flash'"):
        Point("tiny", 1, "single", attention_backend="flash").validate()


def test_new_fields_round_trip_and_old_records_still_load():
    p = Point("tiny", 2, "ulysses", compile=True, tokens=1000)
    assert Point.from_dict(p.to_dict()) == p and "/compile" in p.name
    assert Point("tiny", 2, "ulysses").name == "tiny/ulysses/w2/dp1-u2-r1/float32/ac0/gb2"  # unchanged default name
    # a record's config holds the actual count under "tokens" and the requested one under "tokens_requested"
    cfg = p.to_dict() | {"tokens": 992, "tokens_requested": 1000, "model": {}, "clip": {}}
    assert Point.from_dict(cfg) == p
    old = {"preset": "small", "world": 2, "strategy": "ring", "tokens": 2688, "model": {}, "clip": {}}
    assert Point.from_dict(old) == Point("small", 2, "ring")  # before tokens was an axis
    points, _, name = load_sweep(SWEEPS / "cpu_compile_tokens.toml")
    assert name == "cpu-compile-tokens" and {p.compile for p in points} == {False, True}
    assert {p.tokens for p in points} == {416, 1000} and len({p.name for p in points}) == len(points)


def _float64_losses(point: Point) -> list[float]:
    """The point's training steps, single process, in float64: the reference the fp32 runs are compared to."""
    from s2vbench.model import WanS2V
    from s2vbench.model.flow import S2VBatch, TrainConfig, make_optimizer, synthetic_batch, train_step
    from s2vbench.parallel.train import data_parallel_sample_indices

    preset = get_preset(point.preset)
    torch.manual_seed(0)
    model = WanS2V(preset.model).double()
    cfg = TrainConfig(activation_checkpointing=point.ac)
    opt = make_optimizer(model, cfg)
    batch = synthetic_batch(preset.model, point.clip(), point.global_batch, seed=0)
    batch = S2VBatch(**{k: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                        for k, v in vars(batch).items()})
    losses = []
    for step in range(point.warmup + point.steps):
        batch.sample_index = data_parallel_sample_indices(step, 0, 1, point.global_batch)
        losses.append(train_step(model, opt, batch, step, cfg).loss)
    return losses


SLOW = pytest.mark.skipif(not os.environ.get("S2VBENCH_SLOW_TESTS"), reason="compiles on 2 ranks at once: ~35 s "
                          "with a warm inductor cache, ~150 s cold on 2 cores; set S2VBENCH_SLOW_TESTS=1")


@pytest.mark.parametrize("world,strategy,ac", [(1, "single", False), pytest.param(2, "ulysses", True, marks=SLOW)])
def test_compiled_point_matches_eager(world, strategy, ac):
    """Compiled (inductor, every block and injector) and eager fp32 losses agree to within a tolerance set by the
    eager run's own distance from float64: compilation may reorder float32 arithmetic, not change the maths."""
    eager = Point("tiny", world, strategy, ac=ac, steps=1, warmup=1)
    compiled = Point("tiny", world, strategy, ac=ac, steps=1, warmup=1, compile=True)
    runs = {p.compile: run_ranks(run_point_rank, world, p.to_dict(), timeout_s=240) for p in (eager, compiled)}
    ref = _float64_losses(eager)
    e_losses, c_losses = runs[False][0]["real"]["losses"], runs[True][0]["real"]["losses"]
    assert len(e_losses) == len(c_losses) == len(ref) == 2  # the warm-up step (compiling) and the timed one
    for step, (e, c, r) in enumerate(zip(e_losses, c_losses, ref)):
        tol = max(10 * abs(e - r), 8 * torch.finfo(torch.float32).eps * abs(r))
        print(f"step {step}: compiled {c!r} eager {e!r} float64 {r!r} tolerance {tol:.2e}")
        assert abs(c - e) <= tol, (step, c, e, r, tol)
    rec = point_record(compiled, runs[True])
    m = rec.metric("compile_time")
    assert m.unit == "s" and m.value > 0 and m.stats["unique_graphs"] >= 2
    assert m.stats["graph_breaks"] == 0  # the custom ops (cp_attention and its backward) trace without breaks
    assert all(r["real"]["compile"]["seconds"] > 0 for r in runs[True])
    assert rec.name.endswith("/compile") and rec.config["compile"] is True
    for kind in ("all_to_all",) if strategy == "ulysses" else ():  # the same collectives as eager: none re-run
        assert runs[True][0]["real"]["comm"][kind]["calls"] == runs[False][0]["real"]["comm"][kind]["calls"]


@pytest.mark.parametrize("fields, match", [
    ({"global_batch": 0}, "global_batch must be an integer >= 1, got 0"),  # reached torch on every rank
    ({"global_batch": -2}, "global_batch must be an integer >= 1"),
    ({"grad_accum": 0}, "grad_accum must be an integer >= 1"),
    ({"steps": 0}, "steps must be an integer >= 1"),
    ({"warmup": -1}, "warmup must be an integer >= 0"),
    ({"steps": "3"}, r"steps must be an integer >= 1, got '3'"),
    ({"ac": "false"}, "ac must be true or false"),  # a truthy string
    ({"frames": 0}, "frames must be a positive integer"),
    ({"height": -64}, "height must be a positive integer"),
    ({"width": 64.0}, "width must be a positive integer"),
    ({"world": 0}, r"world \(the GPU count\) must be a positive integer, got 0"),  # divided by zero
    ({"world": 2.0}, "world .* must be a positive integer, got 2.0"),
])
def test_point_validate_names_a_bad_field(fields, match):
    p = Point(**({"preset": "tiny", "world": 2, "strategy": "fsdp"} | fields))
    with pytest.raises(ValueError, match=match):
        p.validate()


@pytest.mark.parametrize("body, match", [
    ('[sweep\npreset = "tiny"', r"not valid TOML \(Expected"),
    ("sweep = 5", "'sweep' must be a \\[sweep\\] table, got 5"),
    ('gpus = [1]', "a sweep file needs a \\[sweep\\] table"),
    ('[sweep]\npreset = "tiny"\ngpus = "1,2"\nstrategies = ["fsdp"]',
     r"\[sweep\] gpus must be a list of integers, e.g. gpus = \[1, 2, 4, 8\]; got '1,2'"),
    ('[sweep]\npreset = "tiny"\ngpus = [2.0]\nstrategies = ["fsdp"]', r"gpus must be a list of integers.*\[2.0\]"),
    ('[sweep]\npreset = "tiny"\ngpus = 2\nstrategies = ["fsdp"]', "gpus must be a list of integers"),
    ('[sweep]\npreset = "tiny"\ngpus = [2]\nstrategies = "fsdp"', "strategies must be a list of strings"),
    ('[sweep]\npreset = "tiny"\ngpus = [2]\nstrategies = ["fsdp"]\nsteps = "3"',
     r"steps must be an integer, .*got '3'"),
    ('[sweep]\npreset = 5\ngpus = [2]\nstrategies = ["fsdp"]', "preset must be a string"),
    ('[sweep]\npreset = "tiny"\ngpus = [2]\nstrategies = ["fsdp"]\nac = "false"',
     r"ac must be true or false or a list of booleans \(an axis\)"),
    ('[sweep]\npreset = "tiny"\ngpus = [2]\nstrategies = ["fsdp"]\ntokens = ["416"]',
     "tokens must be a list of integers"),
    ('[sweep]\npreset = "tiny"\ngpus = [2]\nstrategies = ["fsdp"]\nbogus = [1]',
     "unknown \\[sweep\\] field 'bogus'; known: ac,"),
    ('[sweep]\npreset = "tiny"\ngpus = [2]\nstrategies = ["fsdp", "ulyses"]', r"unknown strategies \['ulyses'\]"),
    ('[sweep]\npreset = "tiny"\ngpus = [2]\nstrategies = ["fsdp"]\ndtype = ["fp16"]',
     r"unknown dtype \['fp16'\]; choose from float32, bfloat16"),  # a typo, not a point that cannot run
])
def test_sweep_file_mistakes_name_the_file_and_field(tmp_path, body, match):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ValueError, match=match) as e:
        load_sweep(path)
    assert str(e.value).startswith(f"{path}: ")
    with pytest.raises(ValueError, match=f"sweep file {tmp_path / 'nope.toml'}: cannot read it"):
        load_sweep(tmp_path / "nope.toml")
    from s2vbench.bench.scaling import _AXIS_TYPES, AXES

    assert set(_AXIS_TYPES) == set(AXES)  # every axis has its TOML type
