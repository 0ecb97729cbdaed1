"""Token-budget bucketing: token counts, per-clip targets, bucket plans, the DP x CP sampler, manifests."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from s2vbench.data.bucketing import (
    BucketError,
    BucketGeometry,
    clip_tokens,
    fit_clip,
    fit_fixed,
    plan_buckets,
    target_for_shape,
)
from s2vbench.data.manifest import (
    ManifestError,
    ManifestRow,
    read_manifest,
    regenerate_shipped,
    shipped_manifests,
    synthetic_manifest,
    write_manifest,
)
from s2vbench.data.sampler import BucketSampler, SamplerError, dp_cost_imbalance
from s2vbench.model.config import get_preset
from s2vbench.model.sequence import sequence_layout

SMALL = get_preset("small").model
BIG = get_preset("14b").model


def small_cost(n: int) -> float:
    # The benchmark passes bench.analytic.clip_step_cost; the data side only needs some convex cost of n.
    return 6.0 * 1e6 * n + 12.0 * SMALL.num_layers * SMALL.dim * n * n


def small_geom(**kw) -> BucketGeometry:
    return BucketGeometry(SMALL, kw.pop("max_tokens", 3072), kw.pop("min_latent_frames", 4),
                          kw.pop("max_latent_frames", 16), **kw)


def random_rows(n: int, seed: int) -> list[ManifestRow]:
    """Rows beyond the synthetic profiles: any size 64..4096 px, any aspect, 0.5-40 s, odd frame rates."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        w, h = (int(x) for x in rng.integers(64, 4097, size=2))
        fps = float(rng.choice([12.0, 23.976, 24.0, 25.0, 30.0, 50.0, 60.0]))
        frames = int(rng.integers(max(1, int(0.5 * fps)), int(40 * fps)))
        audio = None if rng.random() < 0.5 else float(rng.uniform(0.5, 40))
        rows.append(ManifestRow(f"r/{i}.mp4", w, h, frames, fps, audio))
    return rows


# ---- token formula ---------------------------------------------------------------------------------------------

def test_token_formula_matches_spec_table():
    # shared/spec/wan_s2v.md, sequence table: 704x1024 at infer_frames=80 (F = 20 latent frames) -> 63,360.
    assert sequence_layout(BIG, 20, 704 // 8, 1024 // 8, True).total == 63_360
    assert clip_tokens(BIG, 20, 704, 1024) == 63_360
    geom = BucketGeometry(BIG, 63_360, 1, 20)
    assert geom.tokens(20, 704, 1024) == 63_360


def test_token_formula_closed_form_on_random_shapes():
    # Independent of sequence_layout: noisy F T, ref T, FramePack 1 frame at 1x (T), 2 frames at 2x (2/2 * T/4) and
    # 16 frames at 4x (16/4 * T/16): motion = 1.5 T, with T = (H/16)(W/16).
    rng = np.random.default_rng(1)
    for _ in range(50):
        f, h, w = int(rng.integers(1, 40)), 64 * int(rng.integers(1, 30)), 64 * int(rng.integers(1, 30))
        t = (h // 16) * (w // 16)
        geom = BucketGeometry(BIG, 10**9, 1, 40)
        assert clip_tokens(BIG, f, h, w) == geom.tokens(f, h, w) == (f + 1) * t + 3 * t // 2
        assert clip_tokens(BIG, f, h, w, with_motion=False) == (f + 1) * t


# ---- per-clip targets ------------------------------------------------------------------------------------------

def check_target(row: ManifestRow, geom: BucketGeometry, t) -> None:
    m = geom.pixel_multiple
    assert t.tokens <= geom.max_tokens
    assert t.tokens == sequence_layout(geom.cfg, t.latent_frames, t.height // 8, t.width // 8, True).total
    assert t.height % m == 0 and t.width % m == 0
    assert t.height <= row.height and t.width <= row.width, "upscaled"
    assert geom.min_latent_frames <= t.latent_frames <= geom.max_latent_frames
    seconds = row.seconds if row.audio_seconds is None else min(row.seconds, row.audio_seconds)
    assert 4 * t.latent_frames <= math.floor(seconds * geom.model_fps + 1e-9)
    # Aspect kept within the 64-pixel rounding: one scale makes the source cover the target, and the crop
    # removes less than 64 resized pixels on each axis.
    s = max(t.height / row.height, t.width / row.width)
    assert s * row.height - t.height < m - 1e-9 and s * row.width - t.width < m - 1e-9
    assert abs(t.aspect_error - abs((t.width / t.height) / (row.width / row.height) - 1)) < 1e-12
    assert abs(t.crop_loss - (1 - t.height * t.width / (s * row.height * s * row.width))) < 1e-9


@pytest.mark.parametrize("cfg,m,window", [(SMALL, 3072, (4, 16)), (SMALL, 2048, (1, 24)), (BIG, 44_544, (8, 32)),
                                           (BIG, 63_360, (12, 20))])
def test_fit_never_exceeds_m_nor_upscales(cfg, m, window):
    geom = BucketGeometry(cfg, m, *window)
    rows = random_rows(250, seed=m) + synthetic_manifest(150, seed=m)
    fitted = 0
    for row in rows:
        if geom.row_problem(row) is not None:
            with pytest.raises(BucketError, match=row.path):
                fit_clip(row, geom)
            continue
        check_target(row, geom, fit_clip(row, geom))
        fitted += 1
    assert fitted > 200


def test_fit_fills_the_budget_when_the_source_allows():
    # A 4K 30 s clip can reach any M: the target must be within one latent frame's tokens of M (or the window's end).
    geom = BucketGeometry(BIG, 44_544, 8, 32)
    row = ManifestRow("big.mp4", 3840, 2160, 900, 30.0)
    t = fit_clip(row, geom)
    per_frame = (t.height // 16) * (t.width // 16)
    assert geom.max_tokens - t.tokens < per_frame or t.latent_frames == geom.max_latent_frames


def test_paper_clip_at_14b_m():
    # The paper's 48 frames of 1024x768 is 44,544 tokens; a 4:3 source of that size fits exactly at M = 44,544.
    geom = BucketGeometry(BIG, 44_544, 12, 12)
    t = fit_clip(ManifestRow("paper.mp4", 1024, 768, 48, 16.0), geom)
    assert (t.latent_frames, t.height, t.width, t.tokens) == (12, 768, 1024, 44_544)
    assert t.crop_loss == 0 and t.aspect_error == 0


def test_cp_degree_preference():
    # With motion every 64-pixel shape has a multiple of 8 tokens; a CP degree of 3 does not always divide.
    geom3 = small_geom(cp_degrees=(3,))
    rows = [r for r in synthetic_manifest(200, seed=3) if geom3.row_problem(r) is None]
    assert all(fit_clip(r, geom3).tokens % 3 == 0 for r in rows)
    assert all(fit_clip(r, small_geom(cp_degrees=(8,))).tokens % 8 == 0 for r in rows)


def test_geometry_errors_say_the_fix():
    with pytest.raises(BucketError, match="raise max_tokens"):
        small_geom(max_tokens=100)
    with pytest.raises(BucketError, match="multiples of 64"):
        small_geom(pixel_multiple=32)
    with pytest.raises(BucketError, match="frame window"):
        small_geom(min_latent_frames=5, max_latent_frames=4)


# ---- bucket plans ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plan():
    geom = small_geom()
    rows = read_manifest(shipped_manifests()[0], check=geom.row_problem).rows
    return plan_buckets(rows, geom, small_cost, max_buckets=16)


def test_plan_targets_respect_the_rules(plan):
    geom = plan.geometry
    assert len(plan.buckets) <= 16 + plan.overflow
    for row, k, t, naive in zip(plan.rows, plan.bucket_of, plan.targets, plan.naive):
        b = plan.buckets[k]
        assert (t.latent_frames, t.height, t.width, t.tokens) == (*b.shape, b.tokens)
        check_target(row, geom, t)
        assert t.tokens <= naive.tokens  # a bucket never gives a clip more tokens than its own best fit
    assert [b.clips for b in plan.buckets] == list(np.bincount(plan.bucket_of, minlength=len(plan.buckets)))


def test_plan_utilisation_and_batch_sizes(plan):
    m = plan.geometry.max_tokens
    overall, per = plan.utilisation()
    real = sum(t.tokens for t in plan.targets)
    slots = sum(math.ceil(b.clips / b.batch_size) * b.batch_size for b in plan.buckets)
    assert overall == pytest.approx(real / (slots * m))
    for b in plan.buckets:
        mine = [t.tokens for t, k in zip(plan.targets, plan.bucket_of) if k == b.index]
        assert per[b.index] == pytest.approx(sum(mine) / (math.ceil(len(mine) / b.batch_size) * b.batch_size * m))
    for b in plan.buckets:
        assert b.clip_cost == pytest.approx(small_cost(b.tokens))
        # The batch size is the b whose batch cost is nearest the common target (brute force over 1..64).
        errs = [abs(x * b.clip_cost / plan.cost_target - 1) for x in range(1, 65)]
        assert abs(b.batch_size * b.clip_cost / plan.cost_target - 1) == pytest.approx(min(errs))


def test_plan_at_14b_m_gives_small_clips_larger_batches():
    geom = BucketGeometry(BIG, 44_544, 8, 32)
    rows = [r for r in synthetic_manifest(400, seed=5) if geom.row_problem(r) is None]
    p = plan_buckets(rows, geom, small_cost, max_buckets=12)
    for row, t in zip(p.rows, p.targets):
        check_target(row, geom, t)
    by_tokens = sorted(p.buckets, key=lambda b: b.tokens)
    assert by_tokens[0].batch_size > by_tokens[-1].batch_size == 1


# ---- sampler -----------------------------------------------------------------------------------------------------

def order(sampler: BucketSampler, epoch: int) -> list[tuple[int, ...]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_sampler_deterministic_per_seed_and_epoch(plan):
    a = BucketSampler.from_plan(plan, dp=4, cp=2, rank=3, seed=7)
    b = BucketSampler.from_plan(plan, dp=4, cp=2, rank=3, seed=7)
    assert order(a, 0) == order(b, 0)
    assert order(a, 1) == order(b, 1)
    assert order(a, 0) != order(a, 1)
    assert order(a, 0) != order(BucketSampler.from_plan(plan, dp=4, cp=2, rank=3, seed=8), 0)


def test_sampler_covers_each_clip_once_and_cp_groups_agree(plan):
    dp, cp = 3, 2
    per_rank = {r: order(BucketSampler.from_plan(plan, dp, cp, rank=r, seed=1), 2) for r in range(dp * cp)}
    for g in range(dp):
        for c in range(1, cp):
            assert per_rank[g * cp + c] == per_rank[g * cp]  # one clip per CP group, the same on all its ranks
    sampler = BucketSampler.from_plan(plan, dp, cp, seed=1)
    ep = sampler.epoch_plan(2)
    seen = [i for g in range(dp) for batch in per_rank[g * cp] for i in batch]
    dropped = [i for batch in ep.dropped for i in batch]
    assert len(seen) == len(set(seen))
    assert sorted(seen + dropped) == list(range(len(plan.rows)))
    assert len(ep.dropped) < dp
    for batch in per_rank[0]:
        assert len({plan.bucket_of[i] for i in batch}) == 1  # one shape per batch


def test_sampler_dp_costs_within_tolerance(plan):
    dp = 4
    ep = BucketSampler.from_plan(plan, dp, cp=2, seed=0).epoch_plan(0)
    # Recompute every batch's cost from its clips' target tokens, independently of the sampler's bookkeeping.
    step_costs = [[sum(small_cost(plan.targets[i].tokens) for i in batch) for batch in step] for step in ep.steps]
    maxes = sum(max(s) for s in step_costs)
    means = sum(sum(s) / dp for s in step_costs)
    assert dp_cost_imbalance(step_costs)[0] == pytest.approx(maxes / means - 1)
    assert maxes / means - 1 <= 0.02
    # Against the same clips dealt in shuffled order, as naive per-clip training does.
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(plan.rows))
    naive = [[small_cost(plan.naive[i].tokens) for i in perm[k:k + dp]] for k in range(0, len(perm) - dp + 1, dp)]
    assert dp_cost_imbalance(naive)[0] > maxes / means - 1


def test_sampler_resume_mid_epoch(plan):
    dp, cp = 4, 2
    for rank in (0, 5):
        full = order(BucketSampler.from_plan(plan, dp, cp, rank=rank, seed=3), 4)
        s = BucketSampler.from_plan(plan, dp, cp, rank=rank, seed=3)
        s.set_epoch(4)
        it = iter(s)
        first = [next(it) for _ in range(37)]
        state = json.loads(json.dumps(s.state_dict()))  # survives a checkpoint file
        resumed = BucketSampler.from_plan(plan, dp, cp, rank=rank, seed=3)
        resumed.load_state_dict(state)
        rest = list(resumed)
        assert first + rest == full
        flat = [i for b in first + rest for i in b]
        assert len(flat) == len(set(flat))
    other = BucketSampler.from_plan(plan, dp=2, cp=cp, seed=3)
    with pytest.raises(SamplerError, match="same manifest"):
        other.load_state_dict(state)


# ---- baselines -------------------------------------------------------------------------------------------------

def test_fixed_baseline_upscales_and_drops_short_clips():
    geom = small_geom()
    shape = (8, 256, 256)
    small_row = ManifestRow("s.mp4", 128, 96, 600, 30.0)
    t = fit_fixed(small_row, geom, shape)
    assert t.upscaled and t.scale == pytest.approx(256 / 96)
    assert t == target_for_shape(small_row, shape, geom.tokens(*shape))
    assert fit_fixed(ManifestRow("short.mp4", 1920, 1080, 30, 30.0), geom, shape) is None  # 1 s < 32 frames / 16 fps


# ---- manifests ---------------------------------------------------------------------------------------------------

BAD = [({"path": "a.mp4", "width": 0, "height": 720, "frames": 100, "fps": 25}, "zero size"),
       ({"path": "b.mp4", "width": 1280, "height": 720, "frames": -5, "fps": 25}, "bad frames"),
       ({"path": "c.mp4", "width": 1280, "height": 720, "frames": 20, "fps": 25}, "too short"),
       ({"path": "d.mp4", "width": 1280, "height": 720, "fps": 25}, "missing field")]


def write_jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_bad_rows_raise_naming_the_row(tmp_path):
    geom = small_geom()
    good = [r.to_dict() for r in synthetic_manifest(5, seed=2)]
    for bad, kind in BAD:
        f = tmp_path / "m.jsonl"
        write_jsonl(f, good[:3] + [bad] + good[3:])
        with pytest.raises(ManifestError) as e:
            read_manifest(f, check=geom.row_problem)
        msg = str(e.value)
        assert f"{f}:4:" in msg and bad["path"] in msg and kind in msg and "on_error='skip'" in msg


def test_bad_rows_skipped_and_counted(tmp_path):
    geom = small_geom()
    good = [r.to_dict() for r in synthetic_manifest(20, seed=2) if geom.row_problem(r) is None][:10]
    rows = good[:4] + [b for b, _ in BAD] + good[4:]
    f = tmp_path / "m.jsonl"
    write_jsonl(f, rows)
    res = read_manifest(f, on_error="skip", check=geom.row_problem)
    assert [r.to_dict() for r in res.rows] == good
    assert [(s.line, s.path) for s in res.skipped] == [(5 + i, b["path"]) for i, (b, _) in enumerate(BAD)]
    assert res.skipped_by_reason() == {kind: 1 for _, kind in BAD}
    with pytest.raises(ManifestError, match="on_error"):
        read_manifest(f, on_error="ignore")


def test_manifest_roundtrip_and_parquet(tmp_path):
    rows = synthetic_manifest(30, seed=4)
    assert read_manifest(write_manifest(rows, tmp_path / "m.jsonl")).rows == rows
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(ManifestError, match="pip install pyarrow"):
            write_manifest(rows, tmp_path / "m.parquet")
    else:
        assert read_manifest(write_manifest(rows, tmp_path / "m.parquet")).rows == rows


def test_synthetic_manifest_is_realistic_and_deterministic(tmp_path):
    rows = synthetic_manifest(1000, seed=0)
    assert rows == synthetic_manifest(1000, seed=0) and rows != synthetic_manifest(1000, seed=1)
    aspects = {round(max(r.width, r.height) / min(r.width, r.height), 2) for r in rows}
    assert aspects == {1.0, 1.33, 1.78, 2.33}
    assert {min(r.width, r.height) for r in rows} == {360, 480, 720, 1080, 1440, 2160}
    assert all(1.9 <= r.seconds <= 30.1 for r in rows)
    assert {r.fps for r in rows} >= {24.0, 25.0, 30.0, 60.0}
    # The committed manifests are exactly the generator's output.
    for fresh, shipped in zip(regenerate_shipped(tmp_path), shipped_manifests()):
        assert fresh.read_bytes() == shipped.read_bytes()


def test_bench_predicted_only(tmp_path):
    import argparse

    from s2vbench.bench import buckets
    from s2vbench.bench.results import read_results

    f = write_manifest(synthetic_manifest(120, seed=9), tmp_path / "tiny.jsonl")
    parser = argparse.ArgumentParser()
    buckets.add_arguments(parser)
    args = parser.parse_args(["--manifest", str(f), "--no-measure", "--scale-preset", "small", "--scale-max-tokens",
                              "8192", "--scale-frames", "4,24", "--out", str(tmp_path / "out"), "--dp", "2"])
    assert buckets.run(args) == 0
    recs = {r.name: r for r in read_results(tmp_path / "out" / "results.json")}
    assert {"tiny/bucketed", "tiny/fixed", "tiny/naive", "tiny/small/bucketed"} <= set(recs)
    assert recs["tiny/bucketed"].metric("measured_dp_imbalance").status == "not_measured"
    assert (tmp_path / "out" / "report.md").exists() and (tmp_path / "out" / "buckets_tiny.png").exists()


def test_data_never_imports_bench_or_parallel():
    import subprocess
    import sys

    code = ("import sys, s2vbench.data; bad = [m for m in sys.modules if m.startswith(('s2vbench.bench', "
            "'s2vbench.parallel'))]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


# ---- the command's input checks: each fails with one message naming the flag or file, before the work ----------

def _buckets_cli(tmp_path, *extra, out=None):
    from s2vbench.bench import cli

    f = tmp_path / "m.jsonl"
    if not f.exists():
        write_manifest(synthetic_manifest(40, seed=9), f)
    return cli.main(["buckets", "--no-measure", "--scale-preset", "none", "--manifest", str(f),
                     "--out", str(out or tmp_path / "out"), *extra])


@pytest.mark.parametrize("extra, says", [
    (["--threads", "0"], "--threads"), (["--dp", "0"], "--dp"), (["--cp", "0"], "--cp"),
    (["--warmup=-1"], "--warmup"), (["--max-buckets", "0"], "--max-buckets"), (["--base-batch", "0"], "--base-batch"),
    (["--preset", "nope"], "--preset"), (["--scale-preset", "nope"], "--scale-preset"),
    (["--fixed", "4,256"], "--fixed='4,256'"), (["--fixed", "abc"], "--fixed='abc'"),
    (["--fixed", "0,0,0"], "multiples of 64"), (["--fixed", "4,100,100"], "multiples of 64"),
    (["--fixed", "20,1024,1024"], "over --max-tokens"), (["--frames", "16,4"], "--frames 16,4"),
    (["--frames", "4"], "--frames='4'"), (["--max-tokens", "10"], "--max-tokens 10"),
    (["--scale-preset", "small", "--scale-frames", "x"], "--scale-frames='x'"),
    (["--scale-preset", "small", "--scale-max-tokens", "100"], "--scale-max-tokens 100"),
    (["--base-batch", "100"], "--base-batch 100: at most 64"),  # named max_batch, which is no option
    (["--seed=-5"], "argument --seed: takes a whole number from 0 to 2**63 - 1"),  # numpy's own words before
])
def test_bench_refuses_bad_options_before_planning(tmp_path, monkeypatch, capsys, extra, says):
    from s2vbench.bench import buckets

    def planned(*a, **k):
        raise AssertionError("planned before the options were checked")

    monkeypatch.setattr(buckets, "plan_buckets", planned)
    try:
        rc = _buckets_cli(tmp_path, *extra)
    except SystemExit as e:  # argparse's own error
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and says in err and "Traceback" not in err, err
    assert not (tmp_path / "out" / "results.json").exists()


def test_bench_checks_its_output_folder_first(tmp_path, monkeypatch, capsys):
    from s2vbench.bench import buckets

    monkeypatch.setattr(buckets, "plan_buckets", lambda *a, **k: pytest.fail("planned before --out was checked"))
    (tmp_path / "afile").write_text("x")
    assert _buckets_cli(tmp_path, out=tmp_path / "afile") == 2
    assert "--out" in capsys.readouterr().err
    # another run's results are never overwritten (bucket runs do not resume)
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text('{"schema": "s2vbench.results", "records": ["theirs"]}')
    assert _buckets_cli(tmp_path, out=other) == 2
    err = capsys.readouterr().err
    assert f"--out {other} already holds a results.json" in err and "pick a new --out" in err
    assert "theirs" in (other / "results.json").read_text()


def test_bench_says_which_manifest_cannot_fill_a_step(tmp_path, capsys):
    one = write_manifest(synthetic_manifest(1, seed=0, profile="talking"), tmp_path / "one.jsonl")
    f = tmp_path / "m.jsonl"
    f.write_bytes(one.read_bytes())
    # one clip, one batch, four data-parallel ranks: no step (it was a ZeroDivisionError)
    assert _buckets_cli(tmp_path, "--dp", "4") == 2
    err = capsys.readouterr().err
    assert f"manifest {f}" in err and "fewer than the dp=4" in err and "smaller --dp" in err
    # the fixed baseline's clips too short for its frames: named likewise
    assert _buckets_cli(tmp_path, "--dp", "1", "--fixed", "62,64,64") == 2
    assert "--fixed shape with fewer frames" in capsys.readouterr().err
    assert _buckets_cli(tmp_path, "--dp", "1") == 0
    # no usable row at all: which manifest and why, not an empty plan
    f.write_text('{"path": "a.mp4"}\n')
    assert _buckets_cli(tmp_path, out=tmp_path / "out2") == 2
    err = capsys.readouterr().err
    assert f"manifest {f}: no clip is usable" in err and "missing field" in err


def test_unreadable_manifests_name_the_file(tmp_path):
    f = tmp_path / "m.jsonl"
    good = json.dumps(synthetic_manifest(1, seed=0)[0].to_dict()).encode()
    f.write_bytes(good + b"\n" + b'{"path": "\xff.mp4"}\n')
    res = read_manifest(f, on_error="skip")  # a stray byte is one bad row, not a crash
    assert len(res.rows) == 1 and res.skipped[0].line == 2 and "not UTF-8" in res.skipped[0].reason
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(ManifestError, match="is a folder"):
        read_manifest(tmp_path / "d.jsonl")
    pytest.importorskip("pyarrow")
    bad = tmp_path / "m.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(ManifestError) as e:
        read_manifest(bad)
    assert f"manifest {bad} cannot be read as Parquet" in str(e.value)


def test_a_plan_over_max_buckets_says_so_in_records_and_report(tmp_path):
    # the plan's own note reached neither: the report said "at most N buckets" above tables of more shapes
    import argparse

    from s2vbench.bench import buckets
    from s2vbench.bench.results import read_results

    f = write_manifest(synthetic_manifest(120, seed=9), tmp_path / "tiny.jsonl")
    parser = argparse.ArgumentParser()
    buckets.add_arguments(parser)
    args = parser.parse_args(["--manifest", str(f), "--no-measure", "--scale-preset", "small", "--scale-max-tokens",
                              "8192", "--scale-frames", "4,24", "--out", str(tmp_path / "out"), "--dp", "2",
                              "--max-buckets", "1"])
    assert buckets.run(args) == 0
    recs = {r.name: r for r in read_results(tmp_path / "out" / "results.json")}
    report = (tmp_path / "out" / "report.md").read_text()
    for name, kind in (("tiny/bucketed", "bucket"), ("tiny/small/bucketed", "buckets_scale")):
        shapes = int(recs[name].metric("shapes").value) if kind == "buckets_scale" else \
            sum(1 for r in recs.values() if r.kind == "bucket")
        assert shapes > 1, "the test needs a plan that overflows"
        assert f"{shapes - 1} bucket(s) beyond max_buckets=1" in recs[name].notes
    assert "Note: tiny: " in report and "more shapes than --max-buckets 1" in report
