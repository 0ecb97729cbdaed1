"""What each rank of a sweep point runs: real training steps, then the same steps with every collective
replaced by a no-op of the same shapes (torch's "fake" process group), for the compute-only time."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
from pathlib import Path

import torch
import torch.distributed as dist

from ..model import WanS2V, get_preset
from ..model.flow import (S2VBatch, TrainConfig, batch_forward, compute_autocast, make_optimizer, synthetic_batch,
                          train_step)
from ..parallel import parallelize
from ..parallel.comm import collective_seconds, count_comm
from ..parallel.train import data_parallel_sample_indices, parallel_train_step
from .measure import SavedActivations, StepTimer, TrackedMemory, peak_rss_bytes, training_state
from .points import Point


def cuda_index(local_rank: int, device_count: int) -> int:
    """This rank's GPU: its local rank, or the only GPU a launcher that binds one GPU to each task left visible."""
    if device_count == 1:
        return 0
    if not 0 <= local_rank < device_count:
        raise RuntimeError(f"local rank {local_rank} has no GPU of its own: {device_count} are visible on this node; "
                           f"launch at most {device_count} ranks per node (torchrun --nproc-per-node, sbatch "
                           f"--ntasks-per-node) or bind one GPU to each task (srun --gpus-per-task=1)")
    return local_rank


def _device() -> torch.device:
    if torch.cuda.is_available():
        # LOCAL_RANK from torchrun, or from cluster.py under SLURM; the global rank only on one node
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
        torch.cuda.set_device(cuda_index(local, torch.cuda.device_count()))
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class PointOOM(RuntimeError):
    """A rank ran out of memory; every rank raises this, so the point is recorded as OOM."""


def _oom_checked(step_fn, device: torch.device, *args) -> float:
    """Run one step; on CUDA, an OutOfMemoryError on any rank stops every rank together (on CPU an OOM is the
    kernel's SIGKILL, or the allocator's error, which the launcher reports for all ranks)."""
    if device.type != "cuda":
        return step_fn(*args).loss
    return stop_together_on_oom(step_fn, device, *args)


def stop_together_on_oom(step_fn, device: torch.device, *args) -> float:
    """``step_fn(*args).loss``, with every rank's out-of-memory flag all-reduced after the step: a rank that ran
    out does not leave its peers waiting in the next step's collectives, and all raise :class:`PointOOM`.

    That covers ranks that run out together (they hold the same shapes, so they usually do) and a rank that
    runs out after the step's last collective (the optimizer step). One that runs out alone before a
    collective leaves its peers in it: they stop at the process group's timeout, recorded as failed."""
    flag = torch.zeros(1, device=device)
    loss = float("nan")
    try:
        loss = step_fn(*args).loss
    except torch.OutOfMemoryError:
        flag.fill_(1)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item():
        peak = (f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB peak allocated on this rank"
                if device.type == "cuda" else "")
        raise PointOOM(f"out of memory on at least one rank{f' ({peak})' if peak else ''}")
    return loss


def _time_inference(model: WanS2V, batch: S2VBatch, point: Point, timer: StepTimer) -> list[float]:
    """Seconds per denoising step: the conditional and the unconditional (silent audio) forward of CFG."""
    model.eval()
    t = torch.full((batch.latents.shape[0],), 500.0, device=batch.latents.device)
    times: list[float] = []
    with torch.no_grad(), compute_autocast(batch.latents.device.type, point.dtype):
        for i in range(point.warmup + point.steps):
            sink: list[float] = times if i >= point.warmup else []
            with timer.time(sink):
                for audio in (batch.audio_input, batch.audio_input * 0):
                    batch_forward(model, batch, t, audio)
    model.train()
    return times


def _micro_batches(batch: S2VBatch, n: int) -> S2VBatch | list[S2VBatch]:
    if n == 1:
        return batch
    parts = {k: (v.chunk(n) if isinstance(v, torch.Tensor) else [v] * n) for k, v in vars(batch).items()}
    return [S2VBatch(**{k: parts[k][i] for k in parts}) for i in range(n)]


def _nvml_sampler(device: torch.device):
    """An NVML sampler of this rank's GPU, or the reason there is none (a string, for the record)."""
    if device.type != "cuda":
        return "NVML sampling needs a GPU (absent on CPU)"
    try:
        from .hardware import NVMLSampler

        return NVMLSampler(device.index or 0)
    except Exception as e:  # noqa: BLE001 - no NVML (driver or library missing, a MIG slice): not measured, and why
        return f"NVML sampling failed on this GPU: {type(e).__name__}: {e}"[:300]


def compile_blocks(model: WanS2V) -> int:
    """``torch.compile`` every transformer block and every audio-injector module, each on its own (torchtitan's
    per-block compile: the blocks share one compiled graph, and the embeddings, RoPE and head stay eager).

    Call it before :func:`parallelize`: each module is replaced by its compiled wrapper, so FSDP2's hooks sit
    on the wrapper and run eagerly around the compiled forward, activation checkpointing (``run_blocks``)
    wraps the compiled call, and context parallelism reaches the inner attention modules through the wrapper.
    Compilation is lazy, at the first forward (a warm-up step). Returns the number of modules compiled."""
    lists = [model.blocks, model.audio_injector.injector, model.audio_injector.injector_adain_layers]
    n = 0
    for modules in (m for m in lists if m is not None):
        for name, module in list(modules.named_children()):
            modules.register_module(name, torch.compile(module))
            n += 1
    return n


def _compile_seconds() -> float:
    """Seconds this process has spent compiling so far: dynamo frame compiles plus the lazy backward compiles."""
    from torch._dynamo.utils import calculate_time_spent

    return calculate_time_spent().get("total_wall_time", 0.0)


def _run_steps(point: Point, device: torch.device, timed: bool, count: bool, trace_dir: str | None = None,
               warmup: int | None = None) -> dict:
    """``warmup`` (default the point's) untimed steps, then ``point.steps`` timed ones, on a fresh model."""
    warmup = point.warmup if warmup is None else warmup
    preset = get_preset(point.preset)
    torch.manual_seed(0)
    if device.type == "cuda":  # a fresh point: no earlier point's peak, nor its cached blocks
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with device:  # initialised where it runs: on one CPU thread a 14b-width model takes most of a minute
        model = WanS2V(preset.model)
    if point.compile:  # before parallelize (CP, AC, FSDP), as torchtitan orders it
        compile_blocks(model)
    compile_start = _compile_seconds()
    pm = None
    if point.strategy == "single":  # one rank: the attention backend is the model seam's own
        for block in model.blocks:
            block.self_attn.attn_backend = point.attention_backend
    else:
        param_dtype = torch.bfloat16 if (device.type == "cuda" and point.dtype == "bfloat16") else None
        pm = parallelize(model, point.parallel_config(), device.type, param_dtype=param_dtype)
    cfg = TrainConfig(dtype=point.dtype, activation_checkpointing=point.ac)
    opt = make_optimizer(model, cfg)
    dp = point.dp
    dp_rank = pm.dp_rank if pm is not None else 0
    batch = synthetic_batch(preset.model, point.clip(), point.batch_per_rank, seed=dp_rank)
    step_fn = parallel_train_step if pm is not None else train_step
    timer = StepTimer(device)
    times: list[float] = []
    losses: list[float] = []
    total = warmup + point.steps
    sampler = _nvml_sampler(device) if timed else "NVML samples timed steps only (this point has none)"
    with sampler if not isinstance(sampler, str) else contextlib.nullcontext():
        for step in range(total):
            batch.sample_index = data_parallel_sample_indices(step, dp_rank, dp, point.batch_per_rank)
            b = _micro_batches(batch.to(device), point.grad_accum)
            if step >= warmup and timed:
                with timer.time(times):
                    losses.append(_oom_checked(step_fn, device, model, opt, b, step, cfg))
            else:
                losses.append(_oom_checked(step_fn, device, model, opt, b, step, cfg))
    nvml = sampler if isinstance(sampler, str) else (sampler.summary() or "NVML took no sample in the timed steps")
    out = {"times": times, "losses": losses, "nvml": nvml}
    if point.compile:
        from torch._dynamo.utils import counters

        out["compile"] = {"seconds": _compile_seconds() - compile_start,
                          "graph_breaks": sum(counters["graph_break"].values()),
                          "break_reasons": sorted(counters["graph_break"])[:20],
                          "unique_graphs": counters["stats"]["unique_graphs"]}
    if trace_dir is not None and point.trace and dist.get_rank() == 0:  # one more step, profiled
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=acts) as prof:
            step_fn(model, opt, _micro_batches(batch.to(device), point.grad_accum), total, cfg)
        path = Path(trace_dir) / (point.name.replace("/", "__") + ".trace.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(path))
        out["trace"] = str(path)
    if count:  # one more, untimed step: collective bytes and time per kind, activations saved for backward,
        # and the storage it holds at its peak
        from torch.profiler import ProfilerActivity, profile

        saved = SavedActivations(model)
        # (not under torch.compile: the compiled regions' intermediates would go unseen)
        tracked = None if point.compile else TrackedMemory(training_state(model, opt))
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with count_comm(fsdp=pm is not None) as counter, saved.count(), \
                tracked.track() if tracked is not None else contextlib.nullcontext(), profile(activities=acts) as prof:
            step_fn(model, opt, _micro_batches(batch.to(device), point.grad_accum), total, cfg)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        out["comm"] = {k: dataclasses.asdict(s) for k, s in counter.stats.items()}
        out["comm_profiled"] = collective_seconds(prof.events())
        out["saved_activation_bytes"] = saved.bytes
        if tracked is not None:
            out["tracked_peak_bytes"] = tracked.peak
    if point.inference and timed:  # last: no-grad forwards change FSDP's sharding state for the next step
        out["inference_times"] = _time_inference(model, batch.to(device), point, timer)
    if device.type == "cuda":
        out["peak_allocated"] = torch.cuda.max_memory_allocated(device)
        out["peak_reserved"] = torch.cuda.max_memory_reserved(device)
    return out


def run_point_rank(rank: int, world: int, point_dict: dict) -> dict:
    """One rank of a point (called by ``parallel.launch.run_ranks`` or under torchrun)."""
    point = Point.from_dict(point_dict)
    device = _device()
    timed = not point.oversubscribed
    real = _run_steps(point, device, timed=timed, count=True, trace_dir=point_dict.get("trace_dir"))
    compute = None
    if world > 1 and timed:
        from ..parallel.launch import join_fake_group

        dist.barrier()
        join_fake_group(world, rank)
        # The real pass has warmed this process up (a first step here runs as fast as the last: measured);
        # a compiled model is compiled afresh, so it warms up again.
        compute = _run_steps(point, device, timed=True, count=False, warmup=point.warmup if point.compile else 0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"rank": rank, "real": real, "compute": compute, "peak_rss": peak_rss_bytes(), "device_name": name}


__all__ = ["run_point_rank"]
