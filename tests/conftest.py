"""Shared test setup. Threads are pinned to one per process: CI has 2 cores and runs ``pytest -n 2``."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
if not torch.cuda.is_available():
    # Without a GPU the Triton kernels run in the interpreter; this must precede any kernel module import.
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The project's shared/ folder: $S2VBENCH_SHARED, else ../shared beside the checkout."""
    env = os.environ.get("S2VBENCH_SHARED")
    return Path(env) if env else REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    path = shared_dir()
    if not (path / "fixtures").is_dir():
        pytest.fail(f"shared fixtures not found at {path}; set S2VBENCH_SHARED to the folder holding "
                    f"spec/ and fixtures/")
    return path


JOB_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS",
       "SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID")


@pytest.fixture
def no_job(monkeypatch):
    """The test as a process outside any job, whatever the test runner's own environment."""
    for var in JOB_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


ON_GPU = torch.cuda.is_available()
"""Kernel tests run on the GPU when there is one (bf16 included), else in the Triton interpreter (float32 only)."""
DEVICE = "cuda" if ON_GPU else "cpu"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def pytest_benchmark_update_machine_info(config, machine_info):
    """pytest-benchmark's machine_info names the host's CPU but no GPU, and ``s2vbench compare`` matches runs by
    hardware: without this, two cards behind alike CPUs would be compared as one."""
    machine_info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def processes_with(text: str) -> list[str]:
    """Command lines of this machine's processes that contain ``text`` (whole: ``ps`` cuts them at 80 columns
    when its output is not a terminal, unless asked not to)."""
    import subprocess

    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True, timeout=30).stdout
    return [line for line in ps.splitlines() if text in line]
