"""The command-line entry points, run as a user would."""

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


def test_report_command(tmp_path, capsys):
    from s2vbench.bench.results import Metric, Record, ResultsLog

    log = ResultsLog(tmp_path / "r.json", environment={"device": "cpu"})
    for world, t in ((1, 2.0), (2, 1.25)):
        cfg = {"strategy": "single" if world == 1 else "ring", "world": world}
        log.append(Record("iteration", f"p{world}", cfg, [
            Metric("step_time", t, "s", "median", stats={"min": t, "max": t, "n": 1, "step0": t}),
            Metric("exposed_comm", 0.1, "s", "x", stats={"share": 0.08})]))
    assert cli.main(["report", str(log.path), "--out", str(tmp_path / "rep")]) == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| ring"))
    assert "1.250" in row and "1.60" in row and "80%" in row  # step time, speed-up, efficiency
    assert (tmp_path / "rep" / "speedup.png").exists()


def test_an_error_is_one_message_not_a_traceback(tmp_path, capsys):
    missing = tmp_path / "nope.json"
    assert cli.main(["report", str(missing), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("s2vbench report: error: ") and str(missing) in err and "Traceback" not in err
    # --traceback shows where it came from
    from s2vbench.bench.results import ResultsError

    with pytest.raises(ResultsError, match="does not exist"):
        cli.main(["--traceback", "report", str(missing), "--out", str(tmp_path / "r")])
