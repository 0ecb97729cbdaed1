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
