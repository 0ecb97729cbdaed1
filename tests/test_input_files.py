"""Bad plan files, hardware profiles and report inputs: one clear error naming the file, the field and the fix,
never a traceback, a silent wrong answer or an exit 0 that did nothing."""

import json

import pytest

from s2vbench.bench import cli
from s2vbench.bench.perfmodel import PlanError
from s2vbench.bench.plan import load_plan
from s2vbench.bench.profiles import PROFILE_DIR, HardwareProfile, ProfileError, load_profile
from s2vbench.bench.report import speedups, write_report
from s2vbench.bench.results import Metric, Record, ResultsError, ResultsLog

PLAN = 'preset = "14b"\nframes = 48\nsize = "1024x768"\n'


@pytest.mark.parametrize("text, match", [
    (PLAN + 'with_motion = "false"\n', r"with_motion = 'false' must be true or false"),  # bool("false") is True
    (PLAN.replace("48", "[48]"), r"frames = \[48\] must be a whole number"),
    (PLAN.replace("48", '"forty"'), "frames = 'forty'"),
    (PLAN.replace('"1024x768"', "1024"), "size = 1024 must be"),
    (PLAN + "parallel = 8\n", "parallel = 8 must be a \\[parallel\\] table"),
    (PLAN + "global_batch = 0\n", "global_batch = 0 must be at least 1"),
    (PLAN + "width = 512\n", "either size or width and height, not both"),
    ("", "is empty"),
    (PLAN + "[parallel\nulysses = 8\n", "is not valid TOML"),
    (PLAN + "[parallel]\nulysses = true\n", r"\[parallel\] ulysses = True must be a positive integer"),
    (PLAN + "[parallel]\nac = \"no\"\n", r"\[parallel\] ac = 'no' must be true or false"),
    (PLAN + "[parallel]\ngrad_accum = 0\n", r"\[parallel\] grad_accum = 0 must be a positive integer"),
    (PLAN + '[parallel]\ndtype = "fp8"\n', r"\[parallel\] dtype = 'fp8'"),
    (PLAN.replace("48", "49"), "frames=49"),  # checked at load, so that the message names the file
])
def test_bad_plan_values_name_the_file_and_field(tmp_path, text, match):
    plan = tmp_path / "p.toml"
    plan.write_text(text)
    with pytest.raises(PlanError, match=match) as info:
        load_plan(plan)
    assert str(plan) in str(info.value)


def test_plan_errors_from_the_model_and_hardware_name_the_file(tmp_path, capsys):
    plan = tmp_path / "p.toml"
    plan.write_text(PLAN + "[parallel]\nulysses = 7\n")
    assert cli.main(["plan", str(plan)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("s2vbench plan: error: ") and str(plan) in err and "valid degrees" in err
    plan.write_text(PLAN + 'hardware = "b200"\n[parallel]\nulysses = 8\n')
    assert cli.main(["plan", str(plan)]) == 2
    assert f"{plan}: hardware = 'b200'" in capsys.readouterr().err


def _profile(tmp_path, **changes):
    doc = {**json.loads((PROFILE_DIR / "h100-sxm.json").read_text()), **changes}
    path = tmp_path / "hw.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("changes, match", [
    ({"peak_flops": -1}, "peak_flops = -1 must be a positive number"),  # gave negative times, exit 0
    ({"peak_flops": "fast"}, "peak_flops = 'fast'"),
    ({"gpus_per_node": 0}, "gpus_per_node = 0 must be a positive integer"),  # divided by zero in plan
    ({"memory_capacity": 0}, "memory_capacity = 0"),
    ({"comm_overlaps_compute": "false"}, "comm_overlaps_compute = 'false' must be true or false"),
    ({"intra_node": 5}, "intra_node must be an object"),
    ({"inter_node": {"bandwidth": 1e9}}, "inter_node must be an object with bandwidth"),
    ({"matmul": {"flops": "abc", "efficiency": "abc"}}, "matmul must be an object of two lists"),
    ({"attention": {"flops": [1, 2], "efficiency": [0.5]}}, "attention: an efficiency curve needs"),
    ({"rank_skw": 0.1}, r"unknown field\(s\) \['rank_skw'\]"),  # a misspelt optional field kept its default
    ({"rank_skew": -0.1}, "rank_skew = -0.1 must be a non-negative number"),
])
def test_bad_profile_fields_are_named_with_the_file(tmp_path, changes, match):
    path = _profile(tmp_path, **changes)
    with pytest.raises(ProfileError, match=match) as info:
        load_profile(path)
    assert str(path) in str(info.value) and "h100-sxm.json for the format" in str(info.value)


def test_profile_file_shape(tmp_path):
    path = tmp_path / "hw.json"
    for text, match in (("[1, 2]", "is a JSON list, not an object"), ("", "is not valid JSON"),
                        ('{"name": "x", "peak_flops": 1', "is not valid JSON"),
                        ('{"name": "x"}', r"missing field\(s\) \['peak_flops'")):
        path.write_text(text)
        with pytest.raises(ProfileError, match=match):
            load_profile(path)
    with pytest.raises(ProfileError, match="is a JSON list"):
        HardwareProfile.from_dict([])
    good = load_profile("h100-sxm")
    assert HardwareProfile.from_dict(good.to_dict()) == good  # what save() writes still loads


@pytest.mark.parametrize("argv, match", [
    (["--gpus", "0"], "--gpus 0: predict needs at least 1 GPU"),  # printed an empty table, exit 0
    (["--gpus", "-8"], "--gpus -8"),
    (["--hw", ","], "names no hardware profile"),  # printed nothing, exit 0
    (["--hw", "h100-sxm,nope"], "no hardware profile 'nope'"),
])
def test_predict_rejects_what_would_print_nothing_or_half(argv, match, capsys):
    assert cli.main(["predict", *argv]) == 2
    out, err = capsys.readouterr()
    assert match in err and out == ""  # checked before the first table is printed


def test_predict_report_at_a_file(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("")
    assert cli.main(["predict", "--report", str(afile)]) == 2
    assert "is a file, not a folder; pass a folder" in capsys.readouterr().err


def _iteration_log(path, names=("p1",), **config):
    log = ResultsLog(path, environment={"device": "cpu"})
    for name in names:
        log.append(Record("iteration", name, {"strategy": "single", "world": 1, **config}, [
            Metric("step_time", 2.0, "s", "median", stats={"min": 2.0, "max": 2.0, "n": 1, "step0": 2.0}),
            Metric("exposed_comm", 0.0, "s", "x", stats={"share": 0.0})]))
    return path


def test_report_refuses_what_would_give_an_empty_wrong_or_doubled_report(tmp_path):
    good = _iteration_log(tmp_path / "good.json")
    empty = tmp_path / "empty.json"
    ResultsLog(empty, environment={}).flush()
    with pytest.raises(ResultsError, match="holds no records"):  # gave an empty report, exit 0
        write_report([empty], tmp_path / "r")
    with pytest.raises(ValueError, match="is given twice"):  # gave every row twice
        write_report([good, tmp_path / "." / "good.json"], tmp_path / "r")
    with pytest.raises(ResultsError, match="'p1' is in .* and again in"):
        write_report([good, _iteration_log(tmp_path / "copy.json")], tmp_path / "r")
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ValueError, match="is a file, not a folder; pass a folder"):
        write_report([good], afile)
    other = tmp_path / "buckets.json"
    ResultsLog(other, environment={}).append(Record("buckets", "b", {}, [Metric("x", 1.0, "1", "x")]))
    with pytest.raises(ResultsError, match=r"no iteration records \(only buckets\)"):
        write_report([other], tmp_path / "r")
    no_world = _iteration_log(tmp_path / "noworld.json", world=None)
    with pytest.raises(ResultsError, match=r"noworld.json: iteration record 'p1' has config.world = None"):
        write_report([no_world], tmp_path / "r")
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_speedups_name_the_bad_record():
    rec = Record("iteration", "p", {}, [Metric("step_time", 1.0, "s", "x"), Metric("exposed_comm", 0.0, "s", "x")])
    with pytest.raises(ValueError, match="'p' has config.world = None"):  # was a KeyError
        speedups([rec])
    rec.config["world"] = 1
    rec.metrics[0].value = "1.0"
    with pytest.raises(ValueError, match="step_time '1.0', not a positive number"):  # was a TypeError
        speedups([rec])
