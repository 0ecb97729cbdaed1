"""The official-format safetensors loader: single file, sharded with an index, meta models, clear errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from s2vbench.model import CheckpointError, WanS2V, get_preset, load_checkpoint

TINY = get_preset("tiny").model


@pytest.fixture(scope="module")
def weights(shared):
    return load_file(str(shared / "fixtures" / "wan_s2v_tiny" / "weights.safetensors"))


def shard(weights, folder, with_index=True):
    keys = sorted(weights)
    halves = {"model-00001-of-00002.safetensors": keys[:90], "model-00002-of-00002.safetensors": keys[90:]}
    for name, ks in halves.items():
        save_file({k: weights[k].contiguous() for k in ks}, str(folder / name))
    if with_index:
        index = {"weight_map": {k: name for name, ks in halves.items() for k in ks}}
        (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize("with_index", [True, False])
def test_sharded_checkpoint_loads_into_a_meta_model(weights, tmp_path, with_index):
    shard(weights, tmp_path, with_index)
    with torch.device("meta"):
        model = WanS2V(TINY)
    report = load_checkpoint(model, tmp_path)
    assert report.num_tensors == len(weights)
    sd = model.state_dict()
    assert not any(v.is_meta for v in sd.values())
    assert all(torch.equal(sd[k], weights[k]) for k in weights)


def test_dtype_cast(weights, shared):
    model = WanS2V(TINY)
    load_checkpoint(model, shared / "fixtures" / "wan_s2v_tiny" / "weights.safetensors", dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_mismatches_are_named(weights, tmp_path):
    broken = dict(weights)
    del broken["head.head.bias"]
    broken["extra.weight"] = torch.zeros(1)
    save_file(broken, str(tmp_path / "a.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing .*head\.head\.bias.*does not have.*extra\.weight"):
        load_checkpoint(WanS2V(TINY), tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match=r"shape mismatches .*blocks\.0\.ffn\.0\.weight: model \(96, 64\) vs checkpoint \(128, 64\)"):
        load_checkpoint(WanS2V(TINY.replace(ffn_dim=96)), tmp_path / "a.safetensors", strict=False)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(WanS2V(TINY), tmp_path / "nope")
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a .safetensors file"):
        load_checkpoint(WanS2V(TINY), tmp_path / "w.pth")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="no .safetensors files"):
        load_checkpoint(WanS2V(TINY), empty)
