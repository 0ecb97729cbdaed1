"""``s2vbench longform`` at the tiny preset: token counts per arm and clip, the forward of the uncompressed arms,
and the written results, report and plot."""

import pytest
import torch

from s2vbench.bench.longform import run_longform, run_prepared, uncompressed_forward
from s2vbench.bench.results import Metric, Record, ResultsError, ResultsLog, read_results
from s2vbench.model import WanS2V, get_preset


def _expected_tokens(arm: str, clip: int) -> int:
    """Recomputed from the tiny clip's geometry: latent 4 x 16 x 16, patch 1 x 2 x 2."""
    f, h, w = 4, 16, 16
    per_frame = (h // 2) * (w // 2)
    base = f * per_frame + per_frame                       # noisy + reference image
    if clip == 1:
        return base                                        # no motion in the first clip
    if arm == "framepack":                                 # 1 frame at 1x, 2 at 2x, 16 at 4x
        return base + per_frame + (h // 4) * (w // 4) + 4 * (h // 8) * (w // 8)
    if arm == "window":
        return base + 19 * per_frame
    return base + (clip - 1) * f * per_frame               # every latent frame generated so far


def test_longform_tiny(tmp_path):
    run_longform("tiny", tmp_path, clips=3, warmup=1, repeats=1, steps=2, token_cap=None, split_clips=1,
                 split_steps=1, split_audio=False, in_process=True, progress=False)
    records = read_results(tmp_path / "results.json")
    tokens = {(r.config["arm"], r.config["clip"]): r.metric("tokens").value
              for r in records if r.kind == "longform_step"}
    assert tokens == {(arm, k): _expected_tokens(arm, k) for arm in ("framepack", "window", "history")
                      for k in (1, 2, 3)}
    fp = [tokens["framepack", k] for k in (1, 2, 3)]
    hist = [tokens["history", k] for k in (1, 2, 3)]
    assert fp[1] == fp[2] > fp[0]                          # FramePack is flat from clip 2
    assert hist[0] < hist[1] < hist[2]                     # the full history grows
    assert tokens["window", 2] == tokens["window", 3] > fp[1]
    steps = [r for r in records if r.kind == "longform_step"]
    assert all(r.metric("step_time").status == "measured" and r.metric("step_time").value > 0 for r in steps)
    split = next(r for r in records if r.kind == "longform_split")
    assert split.metric("dit_forwards").value == 2       # 1 step with CFG
    report = (tmp_path / "report.md").read_text()
    assert "| framepack | 2" in report and "Sampler cost split" in report
    assert (tmp_path / "longform.png").stat().st_size > 10_000


def test_history_cap_is_recorded(tmp_path):
    cap = _expected_tokens("history", 2)
    run_longform("tiny", tmp_path, clips=3, warmup=0, repeats=1, token_cap=cap, split_clips=0, in_process=True,
                 progress=False)
    by_name = {r.name: r for r in read_results(tmp_path / "results.json")}
    assert by_name["history/clip02"].metric("step_time").status == "measured"
    assert by_name["history/clip03"].metric("step_time").status == "not_measured"
    assert "over_cap" in by_name["history/clip03"].tags
    assert by_name["window/clip03"].metric("step_time").status == "measured"   # the cap is the history arm's


@torch.no_grad()
def test_uncompressed_forward_runs_the_blocks_on_every_motion_token():
    cfg = get_preset("tiny").model
    torch.manual_seed(0)
    model = WanS2V(cfg).eval()
    seen = []
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    x = torch.randn(1, 16, 4, 16, 16)
    args = (x, torch.tensor([500.0]), torch.randn(1, 10, cfg.text_dim), torch.randn(1, 16, 1, 16, 16),
            torch.randn(1, cfg.audio_layers, cfg.audio_dim, 16))
    out = uncompressed_forward(model, *args, motion=torch.randn(1, 16, 7, 16, 16))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert seen == [5 * 64 + 7 * 64]
    # the stages used for the uncompressed arms add up to the model's own forward
    assert torch.allclose(run_prepared(model, model.prepare(*args)), model(*args), atol=1e-6)
    motion = torch.randn(1, 16, 19, 16, 16)
    framepack = model.prepare(*args, motion)
    assert torch.allclose(run_prepared(model, framepack), model(*args, motion), atol=1e-6)


BAD_OPTIONS = [(["--steps", "0"], "--steps"), (["--repeats", "0"], "--repeats"), (["--threads", "0"], "--threads"),
               (["--clips", "0"], "--clips"), (["--split-steps", "0"], "--split-steps"),
               (["--warmup=-1"], "--warmup"), (["--split-clips=-1"], "--split-clips"),
               (["--token-cap", "0"], "--token-cap"), (["--vae-dim", "0"], "--vae-dim"),
               (["--device", "foo"], "--device"), (["--preset", "nope"], "--preset")]
if not torch.cuda.is_available():
    BAD_OPTIONS.append((["--device", "cuda"], "--device 'cuda' is not available: torch.cuda.is_available() is False"))


@pytest.mark.parametrize("extra, says", BAD_OPTIONS)
def test_longform_refuses_bad_options_before_any_work(tmp_path, monkeypatch, capsys, extra, says):
    from s2vbench.bench import cli, longform

    monkeypatch.setattr(longform, "run_longform", lambda *a, **k: pytest.fail("ran before the options were checked"))
    with pytest.raises(SystemExit) as e:
        cli.main(["longform", "--preset", "tiny", "--out", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err and "Traceback" not in err, err


def test_longform_checks_its_output_folder_first(tmp_path, monkeypatch, capsys):
    from s2vbench.bench import cli, longform

    monkeypatch.setattr(longform, "run_longform", lambda *a, **k: pytest.fail("ran before --out was checked"))
    (tmp_path / "afile").write_text("x")
    assert cli.main(["longform", "--preset", "tiny", "--out", str(tmp_path / "afile")]) == 2
    assert "--out" in capsys.readouterr().err


def test_longform_resumes_only_its_own_run(tmp_path):
    def run(out, **kw):
        run_longform("tiny", out, clips=1, repeats=2, split_clips=0, in_process=True, progress=False, **kw)

    measured = Metric("step_time", 1.0, "s", "x")
    other = ResultsLog(tmp_path / "other" / "results.json", environment={})
    other.append(Record("iteration", "p1", {"world": 1}, [measured]))
    with pytest.raises(ResultsError, match="iteration records, not a longform run"):
        run(tmp_path / "other")
    mine = ResultsLog(tmp_path / "mine" / "results.json", environment={})
    mine.append(Record("longform_step", "framepack/clip01", {"preset": "tiny", "repeats": 1}, [measured]))
    with pytest.raises(ResultsError, match="repeats=1 there, 2 now"):  # the old point is not kept as if re-measured
        run(tmp_path / "mine")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{")
    with pytest.raises(ResultsError, match="pick another output folder"):
        run(tmp_path / "bad")


def test_longform_refuses_a_preset_whose_weights_exceed_host_memory(tmp_path, monkeypatch):
    # 14b on a CPU machine: every point would build 65 GB of float32 weights (a traceback from the CPU allocator,
    # or the OOM killer, after minutes)
    from s2vbench.bench import longform, sweep

    monkeypatch.setattr(sweep, "host_memory_available", lambda: 23 * 2**30)
    monkeypatch.setattr(longform, "run_in_fresh_process", lambda *a, **k: pytest.fail("measured"))
    with pytest.raises(ValueError, match=r"preset '14b' needs at least 61.7 GiB of host memory .* 23.0 GiB "
                                         r"available; use --preset tiny or small on CPU"):
        run_longform("14b", tmp_path / "o", clips=1, split_clips=0, progress=False)
    assert not (tmp_path / "o").exists()
    monkeypatch.setattr(sweep, "host_memory_available", lambda: int(1.01 * 2**30))  # tiny: 2.5 MB of weights
    run_longform("tiny", tmp_path / "t", clips=1, repeats=1, split_clips=0, in_process=True, progress=False)
