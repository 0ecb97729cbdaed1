"""``s2vbench plan`` and ``s2vbench predict`` at the edges of their input: whole answers or one clear error."""

import pytest

from s2vbench.bench import cli, plan
from s2vbench.bench.perfmodel import PlanError


def test_predict_report_of_a_short_clip_is_whole(tmp_path, capsys):
    # 56 tokens: the one-clip curve ends at 32 GPUs (64 ranks would hold only padding), it does not fail there
    out = tmp_path / "D"
    argv = ["predict", "--frames", "4", "--size", "64x64", "--gpus", "8", "--report", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    md = (out / "predictions.md").read_text()
    assert "| sequence (1 clip)           |     32 |" in md and "| sequence (1 clip)           |     64 |" not in md


def test_predict_writes_and_prints_nothing_when_a_later_profile_fails(tmp_path, capsys, monkeypatch):
    real = plan.scaling_curves

    def fail_on_a100(work, hw, gpus):
        if hw.name == "a100-80gb":
            raise PlanError("the second profile's curves cannot be predicted")
        return real(work, hw, gpus)

    monkeypatch.setattr(plan, "scaling_curves", fail_on_a100)
    out = tmp_path / "D"
    argv = ["predict", "--frames", "4", "--size", "256x256", "--hw", "h100-sxm,a100-80gb", "--report", str(out)]
    assert cli.main(argv) == 2
    printed, err = capsys.readouterr()
    assert "cannot be predicted" in err and printed == ""
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("argv, match", [
    (["--frames", "400000000000"], "frames=400000000000 of width=1024 x height=768 is 307,200,000,007,680 tokens per "
                                   "clip, above the limit of 10,000,000"),  # was a MemoryError traceback
    (["--frames", "4000000"], "3,072,007,680 tokens per clip, above the limit"),  # was predicted
    (["--size", "1048576x1048576"], "62,277,025,792 tokens per clip, above the limit"),
    (["--gpus", "1048577"], "--gpus 1048577 gives 1,048,577 ranks, above the limit of 1,048,576"),
])
def test_predict_refuses_absurd_sizes_in_one_line(argv, match, capsys):
    assert cli.main(["predict", *argv]) == 2
    out, err = capsys.readouterr()
    assert match in err and out == "" and err.count("\n") == 1


@pytest.mark.parametrize("text, match", [
    ("frames = 400000000000\n[parallel]\nulysses = 8\n", "frames=400000000000 .* above the limit of 10,000,000"),
    ("[parallel]\ndp_shard = 1000000\nulysses = 8\n", r"1 x 1000000 x 1 x 8 gives 8,000,000 ranks, above the limit"),
])
def test_plan_refuses_absurd_sizes_naming_the_file(tmp_path, text, match):
    path = tmp_path / "p.toml"
    path.write_text('preset = "14b"\n' + text)
    with pytest.raises(PlanError, match=match) as info:
        plan.load_plan(path)
    assert str(info.value).startswith(f"{path}: ")


def test_the_size_limits_leave_room_for_any_real_clip():
    _cfg, lay = plan.Workload("14b", 12000, 1024, 768, 1).model()  # 12,000 frames: 12.5 minutes in one clip
    assert lay.total == 9_223_680


def _named_profile(path, name):
    import json

    from s2vbench.bench.profiles import PROFILE_DIR

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**json.loads((PROFILE_DIR / "h200.json").read_text()), "name": name}))


def test_a_plans_hardware_file_is_read_from_the_plans_folder(tmp_path, monkeypatch, capsys):
    plans, cwd = tmp_path / "plans", tmp_path / "cwd"
    _named_profile(plans / "hw.json", "beside-the-plan")
    _named_profile(cwd / "stray.json", "in-the-cwd")
    cwd.mkdir(exist_ok=True)
    monkeypatch.chdir(cwd)
    plan_file = plans / "p.toml"
    plan_file.write_text('hardware = "hw.json"\n[parallel]\nulysses = 8\n')
    assert cli.main(["plan", str(plan_file)]) == 0, capsys.readouterr().err
    assert "(beside-the-plan)" in capsys.readouterr().out
    # a path that resolves only from the current directory would make the plan mean another thing elsewhere
    plan_file.write_text('hardware = "stray.json"\n[parallel]\nulysses = 8\n')
    with pytest.raises(PlanError, match=r"hardware = 'stray.json': no file .*plans/stray.json \(a relative path in "
                                        r"a plan is read from the plan's folder\); stray.json exists relative to the "
                                        r"current directory: write hardware = '../cwd/stray.json'"):
        plan.load_plan(plan_file)


def test_gib_keeps_three_significant_figures():
    from s2vbench.bench.perfmodel import fmt_gib

    assert [fmt_gib(b) for b in (108.03e9, 48.0e9, 80 * 2**30, 24 * 2**20, 0)] == ["101", "44.7", "80.0", "0.0234",
                                                                                "0"]


def test_memory_is_gib_in_the_table_the_notes_the_json_and_plan():
    from s2vbench.bench.perfmodel import Strategy
    from s2vbench.bench.profiles import load_profile

    hw = load_profile("h100-sxm")
    work = plan.Workload("small", 32, 256, 256, 2)
    rows, preds = plan.claim_table(work, 2, hw)
    column = plan.PREDICTION_HEADERS.index("GiB/rank")
    for row, rec in zip(rows, plan._records(preds, hw, work)):
        stored = next(m for m in rec.metrics if m.name == "memory_per_rank")
        assert stored.unit == "GiB" and row[column] == f"{stored.value:.3g}", (row, stored.value)  # was GB
        assert 0 < stored.value < 1  # the small preset
    text = plan.describe_plan(work, Strategy(1, 2, 1), hw)
    line = next(line for line in text.splitlines() if line.startswith("predicted memory per rank (GiB): params 0.0"))
    assert "params 0.0," not in line and line.endswith(" of 80.0")  # an H100 80GB holds 80 GiB, printed 85.9 GB
    huge = plan.claim_table(plan.Workload("14b", 48, 1024, 768, 1), 1, hw)[1][0][1]
    assert "does not fit: 304 GiB per rank > 80.0 GiB" in huge.notes


def test_the_tables_usp_row_is_the_curves_split():
    from s2vbench.bench.perfmodel import Strategy
    from s2vbench.bench.profiles import load_profile

    hw = load_profile("h100-sxm")
    work = plan.Workload("14b", 4, 256, 256, 16)
    # Ulysses fills the node, ring crosses nodes: on 16 GPUs u8 x r2 (3.08 s at the paper's clip), not u4 x r4
    # (3.28 s), as the one-clip curve splits it
    _rows, preds = plan.claim_table(work, 16, hw)
    table = [(name, p.strategy) for name, p in preds if "USP" in name]
    curve = plan.scaling_curves(work, hw, [16])["sequence (1 clip)"][0][1].strategy
    assert table == [("CP: FSDP + USP u8xr2, 1 clip, AC", curve)] and curve == Strategy(1, 8, 2)
    # on one node, beside the Ulysses-8 row, the hybrid keeps a ring of 2 (the claim's u4 x r2); 1 GPU has none
    usp = {gpus: [st for name, st, _ in plan.claim_configurations(gpus, 40, 8) if "USP" in name] for gpus in (1, 8)}
    assert usp == {1: [], 8: [Strategy(1, 4, 2)]}


def test_inference_splits_one_clip_over_all_the_gpus_as_the_curves_do():
    from s2vbench.bench.perfmodel import Strategy
    from s2vbench.bench.profiles import load_profile

    # it used Ulysses min(gpus, 8) x ring gpus // 8: Ulysses-3 over 40 heads on 3 GPUs, 8 ranks on 12
    work = plan.Workload("14b", 4, 256, 256, 1)
    for gpus, split in ((3, (1, 3)), (12, (4, 3)), (16, (8, 2))):
        inference = plan.claim_section(work, gpus, load_profile("h100-sxm"), report=True).inference
        assert inference.strategy == Strategy(1, *split, ac=False), gpus


def test_predict_refuses_a_profile_given_twice(tmp_path, capsys):
    _named_profile(tmp_path / "a.json", "calibrated")
    _named_profile(tmp_path / "b.json", "calibrated")  # two calibrations with one name: one PNG overwrote the other
    small = ["--frames", "4", "--size", "256x256"]
    for hw, match in (("h200,h200", "--hw names profile 'h200' twice ('h200' and 'h200')"),
                      (f"{tmp_path / 'a.json'},{tmp_path / 'b.json'}", "--hw names profile 'calibrated' twice")):
        assert cli.main(["predict", *small, "--hw", hw, "--report", str(tmp_path / "D")]) == 2
        out, err = capsys.readouterr()
        assert match in err and out == ""
    assert not (tmp_path / "D").exists()


@pytest.mark.parametrize("text", ['preset = "14b"\n', 'preset = "14b"\n[parallel]\n'])
def test_a_plan_without_parallel_degrees_is_refused(tmp_path, text):
    path = tmp_path / "p.toml"
    path.write_text(text)  # planned 1 rank, while the empty file's error said a [parallel] table is needed
    with pytest.raises(PlanError, match=r"no \[parallel\] degrees: .* \(dp_shard = 1 for one rank\)"):
        plan.load_plan(path)
    path.write_text(text + ('' if "[parallel]" in text else "[parallel]\n") + "dp_shard = 1\n")
    assert plan.load_plan(path)[1].world_size == 1


def test_plan_and_predict_default_to_the_presets_clip_and_say_so(tmp_path, capsys):
    # they took the 14b's 44,544-token clip for every preset, where `scaling` takes the preset's own
    assert cli.main(["predict", "--preset", "tiny", "--gpus", "2"]) == 0
    assert "tiny: 16 frames of 128x128 (the tiny preset's own clip, the default) = 416 tokens per clip" in \
        capsys.readouterr().out
    assert cli.main(["predict", "--preset", "tiny", "--frames", "8", "--gpus", "2"]) == 0
    assert ("8 frames of 128x128 (as given; the tiny preset's own clip is 16 frames of 128x128)"
            in capsys.readouterr().out)
    path = tmp_path / "p.toml"
    path.write_text('preset = "small"\n[parallel]\nulysses = 2\n')
    assert cli.main(["plan", str(path)]) == 0
    assert ("workload: small, 32 frames of 256x256 (the small preset's own clip, the default), 2,688 tokens per clip"
            in capsys.readouterr().out)
