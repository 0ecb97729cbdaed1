"""Measurement helpers: step timers, peak memory, and activations saved for backward."""

from __future__ import annotations

import contextlib
import resource
import sys
import time

import torch


class StepTimer:
    """Wall time of one step: CUDA events and a synchronize on GPU, perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    @contextlib.contextmanager
    def time(self, out: list[float]):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            yield
            end.record()
            torch.cuda.synchronize()
            out.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            yield
            out.append(time.perf_counter() - t0)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class SavedActivations:
    """Bytes of tensors saved for backward inside the block, deduplicated by storage, parameters and buffers
    excluded (they are not activations). Autocast's low-precision weight copies do count: they are memory
    the step holds until backward."""

    def __init__(self, module: torch.nn.Module):
        self._exclude = {self._key(t) for t in (*module.parameters(), *module.buffers())}
        self._seen: set = set()
        self.bytes = 0

    @staticmethod
    def _key(t: torch.Tensor):
        if hasattr(t, "to_local"):  # DTensor parameters: their local shard
            t = t.to_local()
        try:
            st = t.untyped_storage()
            return (st.data_ptr(), st.nbytes(), t.device.type)
        except (RuntimeError, NotImplementedError):
            return (id(t), 0, t.device.type)

    def _pack(self, t: torch.Tensor):
        # parameters, FSDP's unsharded ones included, and views of them (a linear's transposed weight): FSDP
        # frees an unsharded storage after forward and gathers it again for backward, so it is not held
        if isinstance(t, torch.nn.Parameter) or isinstance(t._base, torch.nn.Parameter):
            return t
        key = self._key(t)
        if key not in self._exclude and key not in self._seen:
            self._seen.add(key)
            self.bytes += key[1]
        return t

    @contextlib.contextmanager
    def count(self):
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t):
            yield self


__all__ = ["SavedActivations", "StepTimer", "peak_rss_bytes"]
