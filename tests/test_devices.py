"""A device the caller names is checked once, before any work, wherever s2vbench.model takes one: checkpoint and VAE
loading, the audio frontend and the pipeline; the device mesh reuses the check (tests/test_parallel_mesh.py)."""

import re

import pytest
import torch
from safetensors.torch import save_file

from s2vbench.model import DeviceError, check_device, load_state_dict

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture
def two_gpus(monkeypatch):
    """This process as one that sees cuda:0 and cuda:1 and runs on cuda:1."""
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a, **k: torch.device("cuda"))
    monkeypatch.setattr(torch.accelerator, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)


REFUSED = [
    pytest.param("cuda", r"is not available: torch\.cuda\.is_available\(\) is False", marks=NO_GPU),
    pytest.param("cuda:0", r"is not available", marks=NO_GPU),
    ("banana", "is not a device name torch knows"),
    ("meta", "is not a device this process can compute on"),
]


@pytest.mark.parametrize("device, why", REFUSED)
def test_a_device_this_process_lacks_is_named_with_the_devices_here(device, why):
    here = r"devices here: cpu\. Pass \"cpu\"" if not torch.cuda.is_available() else r"devices here: cpu, cuda:0"
    with pytest.raises(DeviceError, match=rf"^device {re.escape(repr(device))} {why}.*; {here}"):
        check_device(device)
    assert check_device("cpu") == check_device(torch.device("cpu")) == torch.device("cpu")


def test_a_gpu_index_must_be_one_this_process_sees(two_gpus):
    # the model moves tensors to the GPU it is given: unlike the mesh, it does not need the current one
    assert [check_device(d) for d in ("cuda", "cuda:0", "cuda:1")] == [torch.device("cuda"), torch.device("cuda", 0),
                                                                      torch.device("cuda", 1)]
    with pytest.raises(DeviceError, match=r"^--device 'cuda:2' does not exist: this process sees 2 cuda device\(s\); "
                                          r"devices here: cpu, cuda:0, cuda:1\. Pass \"cuda\" or \"cpu\"; "
                                          r"CUDA_VISIBLE_DEVICES"):
        check_device("cuda:2", "--device")


@pytest.mark.parametrize("device, why", REFUSED)
def test_loaders_check_the_device_before_reading(tmp_path, device, why):
    from s2vbench.model.audio_frontend import AudioFrontend, tiny_wav2vec2_config
    from s2vbench.model.pipeline import build_models
    from s2vbench.model.vae import load_vae

    path = tmp_path / "w.safetensors"
    save_file({"x": torch.ones(2)}, str(path))
    assert load_state_dict(path, device="cpu")["x"].device == torch.device("cpu")
    for load in (lambda: load_state_dict(path, device=device), lambda: load_vae(path, device=device),
                 lambda: AudioFrontend(config=tiny_wav2vec2_config(num_layers=1), device=device),
                 lambda: build_models("tiny", None, None, device, 0)):
        with pytest.raises(DeviceError, match=rf"^device {re.escape(repr(device))} {why}"):
            load()
