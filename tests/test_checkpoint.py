"""The official-format safetensors loader: single file, sharded with an index, meta models, clear errors (also
for a file that cannot be read, wherever s2vbench.model reads safetensors)."""

import json
import random
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from s2vbench.model import CheckpointError, WanS2V, get_preset, load_checkpoint, load_state_dict
from s2vbench.model.checkpoint import checkpoint_files
from s2vbench.model.vae import load_vae

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


def damaged(good: bytes, how: str) -> bytes:
    """``good`` (a real safetensors file) damaged as downloads and disks damage files."""
    if how == "truncated":
        return good[: len(good) // 2]
    if how == "random bytes":
        return random.Random(0).randbytes(4096)
    if how == "empty":
        return b""
    # a header whose first tensor claims more bytes than the file holds
    n = int.from_bytes(good[:8], "little")
    header = json.loads(good[8:8 + n])
    first = sorted(k for k in header if k != "__metadata__")[0]
    header[first]["data_offsets"][1] += 4096
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + good[8 + n:]


DAMAGE = ["truncated", "random bytes", "empty", "lying header"]


@pytest.mark.parametrize("how", DAMAGE)
def test_unreadable_file_is_a_checkpoint_error_naming_it(shared, tmp_path, how):
    good = (shared / "fixtures" / "wan_s2v_tiny" / "weights.safetensors").read_bytes()
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(damaged(good, how))
    named = rf"{re.escape(str(bad))} \({len(bad.read_bytes()):,} bytes\) is not a readable safetensors file .*download"
    with torch.device("meta"):
        model = WanS2V(TINY)
    for load in (lambda: load_checkpoint(model, bad), lambda: load_state_dict(bad), lambda: checkpoint_files(bad),
                 lambda: load_checkpoint(model, tmp_path), lambda: load_vae(bad)):
        with pytest.raises(CheckpointError, match=named):
            load()


def test_unreadable_vae_pth_is_named(tmp_path):
    bad = tmp_path / "Wan2.1_VAE.pth"
    torch.save({"conv1.weight": torch.ones(4)}, bad)
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=rf"VAE checkpoint {re.escape(str(bad))} \(100 bytes\) cannot be read "
                                              rf"with torch\.load.*truncated or corrupt.*download it again"):
        load_vae(bad)
    torch.save([torch.ones(4)], bad)
    with pytest.raises(CheckpointError, match="holds a list, not a state dict of tensors"):
        load_vae(bad)


def test_unreadable_shard_or_weight_map_is_named(weights, tmp_path):
    shard(weights, tmp_path)
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.json"
    second = tmp_path / "model-00002-of-00002.safetensors"
    good = second.read_bytes()
    second.write_bytes(good[:100])
    with pytest.raises(CheckpointError, match=r"model-00002-of-00002\.safetensors \(100 bytes\) is not a readable"):
        load_checkpoint(WanS2V(TINY), tmp_path)
    second.write_bytes(good)
    for text, why in (('{"weight_map": {', "cannot be read"), ('{"metadata": {}}', 'has no "weight_map"')):
        index.write_text(text)
        with pytest.raises(CheckpointError, match=rf"weight map .*index\.json {why}.*download it again"):
            load_checkpoint(WanS2V(TINY), tmp_path)
    # a map from another download: a key sent to the shard that does not hold it
    key = sorted(weights)[0]
    index.write_text(json.dumps({"weight_map": {key: second.name}}))
    with pytest.raises(CheckpointError, match=rf"maps 1 keys to {second.name}, which does not hold them.*{key}"):
        checkpoint_files(tmp_path)


def test_other_safetensors_inputs_name_an_unreadable_file(tmp_path):
    from s2vbench.model.audio_frontend import AudioFrontend, tiny_wav2vec2_config
    from s2vbench.model.pipeline import PipelineInputError, load_audio_features, load_text_embedding

    bad = tmp_path / "features.safetensors"
    bad.write_bytes(b"")
    for load in (load_audio_features, load_text_embedding):
        with pytest.raises(PipelineInputError, match=r"features\.safetensors \(0 bytes\) is not a readable"):
            load(bad)
    wav2vec2 = tmp_path / "wav2vec2"
    AudioFrontend(config=tiny_wav2vec2_config(num_layers=1)).model.save_pretrained(wav2vec2)
    weights = wav2vec2 / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])
    with pytest.raises(CheckpointError, match=r"wav2vec2 weights file .*model\.safetensors .* is not a readable"):
        AudioFrontend(wav2vec2)
