"""The command-line entry points, run as a user would."""

import json
import subprocess
import sys

import pytest

from s2vbench.bench import cli
from s2vbench.model.cli import describe


@pytest.mark.parametrize("preset, total", [("tiny", "648,073"), ("small", None), ("14b", "16,295,755,609")])
def test_model_summary(preset, total):
    text = describe(preset)
    assert "casual_audio_encoder" in text and "blocks" in text
    if total:
        assert "total" in text and total in text
    if preset in ("tiny", "small"):
        assert "forward (CPU" in text and "finite=True" in text
    else:
        assert "forward skipped" in text
    if preset == "14b":
        assert "14,055,772,160" in text and "1,887,928,320" in text and "44,544" in text


def test_python_dash_m_model():
    out = subprocess.run([sys.executable, "-m", "s2vbench.model", "--preset", "tiny"], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "648,073" in out.stdout and "output (1, 16, 4, 16, 16)" in out.stdout


def test_run_writes_results(tmp_path, capsys):
    assert cli.main(["run", "--presets", "tiny", "--dtypes", "float32", "--steps", "2", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    (rec,) = doc["records"]
    assert rec["kind"] == "model_smoke" and rec["config"]["preset"] == "tiny"
    st = {m["name"]: m for m in rec["metrics"]}["step_time"]
    assert st["unit"] == "s" and st["stats"]["n"] == 2 and st["value"] > 0
    assert rec["environment"]["torch"]
    assert "model smoke run" in capsys.readouterr().out
