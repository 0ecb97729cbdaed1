"""Device peaks (from datasheets, not measured here) and NVML sampling."""

from __future__ import annotations

import threading

# Dense bf16 tensor-core peaks in TFLOP/s, from the vendors' datasheets (no sparsity).
BF16_PEAK_TFLOPS = {
    "H100 SXM": 989.4,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H200": 989.4,
    "H200 NVL": 835.5,  # 1,671 TFLOP/s with sparsity, halved
    "A100": 312.0,
}


def bf16_peak_tflops(device_name: str | None) -> float | None:
    """Datasheet dense bf16 peak of a CUDA device name, or None when unknown (CPUs included)."""
    if not device_name:
        return None
    name = device_name.upper()
    if "H100" in name:
        if "PCIE" in name:
            return BF16_PEAK_TFLOPS["H100 PCIe"]
        if "NVL" in name:
            return BF16_PEAK_TFLOPS["H100 NVL"]
        return BF16_PEAK_TFLOPS["H100 SXM"]
    if "H200" in name and "NVL" in name:
        return BF16_PEAK_TFLOPS["H200 NVL"]
    for key in ("H200", "A100"):
        if key in name:
            return BF16_PEAK_TFLOPS[key]
    return None


def nvml_handle(nvml, cuda_index: int):
    """The NVML handle of torch's CUDA device ``cuda_index``, matched by UUID. NVML numbers every GPU of the
    node and ignores ``CUDA_VISIBLE_DEVICES`` (which SLURM and per-rank launchers set), so torch's index names
    another GPU whenever that is set."""
    import torch

    def bare(uuid) -> str:
        uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
        return uuid.lower().removeprefix("gpu-")

    want = bare(torch.cuda.get_device_properties(cuda_index).uuid)
    for i in range(nvml.nvmlDeviceGetCount()):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            uuid = nvml.nvmlDeviceGetUUID(handle)
        except Exception:  # noqa: BLE001 - a GPU this job may not open (a cgroup-restricted SLURM job): not ours
            continue
        if bare(uuid) == want:
            return handle
    raise LookupError(f"no NVML device has the UUID of CUDA device {cuda_index} ({want}); a MIG slice has its "
                      f"own UUID, and NVML samples whole GPUs")


class NVMLSampler:
    """Samples power (W), SM utilisation (%) and used memory (GiB) of one GPU in a background thread."""

    def __init__(self, cuda_index: int, period_s: float = 0.1):
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        try:
            self._handle = nvml_handle(pynvml, cuda_index)
        except BaseException:
            pynvml.nvmlShutdown()
            raise
        self.period_s = period_s
        self.samples: list[tuple[float, float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        nv = self._nvml
        while not self._stop.is_set():
            try:
                power = nv.nvmlDeviceGetPowerUsage(self._handle) / 1e3
                util = nv.nvmlDeviceGetUtilizationRates(self._handle).gpu
                mem = nv.nvmlDeviceGetMemoryInfo(self._handle).used / 2**30
                self.samples.append((power, float(util), mem))
            except Exception:  # a sample that fails is skipped, sampling goes on
                pass
            self._stop.wait(self.period_s)

    def __enter__(self) -> "NVMLSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._nvml.nvmlShutdown()

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        cols = list(zip(*self.samples))
        return {"power_w_mean": sum(cols[0]) / len(cols[0]), "power_w_max": max(cols[0]),
                "sm_util_mean": sum(cols[1]) / len(cols[1]), "memory_used_gib_max": max(cols[2]),
                "n": float(len(self.samples))}


__all__ = ["BF16_PEAK_TFLOPS", "NVMLSampler", "bf16_peak_tflops", "nvml_handle"]
