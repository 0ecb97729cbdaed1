"""The performance model: predicted time and memory of a Wan-S2V training iteration or sampled clip.

Compute comes from the real shapes, op by op (``unit_ops``), each at the efficiency its size gets in the
hardware profile. Communication is alpha-beta on the link each group crosses (``collective_time``), with each
collective kind's own alpha and beta where the profile measured them: the bandwidth term scales as (p - 1)/p
of the buffer, the latency term as p - 1 steps. Overlap rules:

* FSDP: a layer's all-gather is prefetched behind the previous layer's compute (forward), its re-gather and
  the next layer's reduce-scatter behind the neighbouring layer's backward; the first gather and the last
  reduce-scatter stay exposed.
* Ring: each step's K/V (and in backward dK/dV) exchange hides behind that step's block attention when the
  block is large enough; what is left is exposed.
* Ulysses: the all-to-alls sit between projections and attention, with nothing to hide behind: exposed.
* Links are not shared in the model: FSDP and context-parallel traffic overlapping on one link is not
  charged twice (a known optimism, largest where both are exposed).
* A profile whose collectives share the compute cores (gloo on a CPU: ``comm_overlaps_compute`` false) hides
  nothing: every collective is exposed.
* Ranks on shared, noisy cores drift apart, and each collective waits for the slowest: the profile's
  ``rank_skew`` of a rank's work is charged as exposed (0 on GPU profiles).

Backward costs twice the forward's FLOPs for matmuls and ``ATTENTION_BACKWARD_FLOPS`` times for fused
attention, at the profile's backward efficiency.

"Other" time is the optimizer's traffic over the parameter shard, the host's per-op overhead (dearer under
FSDP's DTensors) times the ops rank 0's step dispatches (CPU), and elementwise memory traffic (norms, RoPE,
modulation, residuals, casts and their backwards: the bytes the model's own ops move, counted on fake tensors
in the strategy's dtype, plus the ring's merges and accumulators and Ulysses' packing) at the profile's
elementwise rate and fitted factor, and activation offload when asked for.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field

from ..model.config import WanS2VConfig
from ..model.sequence import SequenceLayout
from ..parallel.mesh import MeshDegrees, ParallelConfig
from .analytic import (
    ActivationBytes,
    ForwardFlops,
    activation_bytes,
    count_dispatched_ops,
    elementwise_traffic,
    forward_flops,
    injection_frames,
    meta_model,
    parameter_count,
)
from .profiles import COLLECTIVE_KINDS, HardwareProfile, Link

ATTENTION_BACKWARD_FLOPS = 2.5
"""Backward FLOPs of a fused attention call per forward FLOP: a flash-style backward recomputes the scores and
runs four more matmuls (dV, dP, dQ, dK) against the forward's two. Matmul backward is two matmuls: 2."""


RING_FORWARD_BYTES = {"float32": (0.0, 28.8), "bfloat16": (12.0, 34.8)}
"""(once, per ring step after the first): bytes per element of a rank's [tokens, dim] share that
``parallel.ring.ring_forward`` moves outside its local attention calls, per layer: merging each step's
(out, lse) into the running one in float32, and in bf16 the casts in and out. Counted from the code under the
fake process group at head_dim 128, the LSE's per-head share folded in (a test pins them)."""
RING_BACKWARD_BYTES = {"float32": (24.0, 52.0), "bfloat16": (36.0, 46.0)}
"""(once, per ring step): the same for ``ring_backward``: the float32 dQ, dK and dV accumulators (zeroed once,
added to every step, cast back at the end)."""
ULYSSES_PACK_PASSES = 4
"""[tokens, dim] passes in the compute dtype per Ulysses all-to-all: packing the heads out before it, unpacking
them after (read and write each)."""


OPTIMIZER_PASSES = 9
"""Float32 passes over each rank's parameter shard per step: AdamW reads the parameter, its gradient and both
moments and writes three back (7), gradient scaling reads and writes the gradient (2). Gradients are freed,
not zeroed."""


class PlanError(ValueError):
    """A configuration the model cannot predict, with the fix."""


def fmt_gib(nbytes: float) -> str:
    """Bytes as GiB, the unit of every memory figure the model prints (capacities are binary: an "80 GB" GPU holds
    80 GiB), to 3 significant figures and whole GiB from 100 up, so that a small preset's megabytes still show."""
    gib = nbytes / 2 ** 30
    if gib == 0:
        return "0"
    return f"{gib:.{max(0, 2 - math.floor(math.log10(abs(gib))))}f}"


@dataclass(frozen=True)
class Strategy(MeshDegrees):
    """How the job is split, in the order ``parallel.parallelize`` applies it: ``parallel.ParallelConfig``'s
    degrees plus what only the model needs (dtype, accumulation, offload)."""

    ac: bool = True
    """Activation checkpointing of every layer."""
    dtype: str = "bfloat16"
    """Compute dtype: "bfloat16" (bf16 FSDP parameters, float32 reduction and master state) or "float32"."""
    grad_accum: int = 1
    """Micro-batches per step on each data-parallel replica."""
    offload_activations: bool = False
    """Move saved activations to host memory during forward and back during backward (a baseline's cost)."""

    @property
    def elem_bytes(self) -> int:
        """Bytes per element of the compute dtype (the bf16 layers in flight, the exchanged activations)."""
        return 2 if self.dtype == "bfloat16" else 4

    def parallel_config(self) -> ParallelConfig:
        """The degrees as the real job's configuration (one validation for both)."""
        return ParallelConfig(self.dp_shard, self.ulysses, self.ring, self.ac, dp_replicate=self.dp_replicate)

    @property
    def label(self) -> str:
        parts = ([f"rep{self.dp_replicate}"] if self.dp_replicate > 1 else []) + [f"dp{self.dp_shard}"] + \
                ([f"u{self.ulysses}"] if self.ulysses > 1 else []) + ([f"r{self.ring}"] if self.ring > 1 else [])
        extra = (["ac"] if self.ac else []) + (["offload"] if self.offload_activations else []) + \
                ([f"ga{self.grad_accum}"] if self.grad_accum > 1 else [])
        return "-".join(parts + extra)


@dataclass(frozen=True)
class Op:
    """One kind of kernel call in one layer's forward."""

    name: str
    """What it computes."""
    kind: str
    """"matmul" or "attention" (picks the efficiency curve)."""
    flops: float
    """FLOPs of one call."""
    calls: int = 1
    """Calls per layer forward."""


MEMORY_MARGIN = 0.05
"""Relative error of the predicted peak memory: the model is within 4 % of the tensor storage real CPU steps
hold (tests/test_perfmodel.py), and a GPU's caching allocator, NCCL's and cuBLAS's workspaces are not
modelled, nor the ~1 % of the datasheet capacity (the profiles' figure) CUDA does not expose. A peak this
close to a device's capacity is reported as a tight fit, not a fit."""


@dataclass
class Prediction:
    """Predicted time and memory of one workload under one strategy on one profile (seconds, bytes)."""

    strategy: Strategy
    tokens: int
    """Sequence tokens of one clip."""
    global_batch: int
    """Clips per iteration."""
    compute: float = 0.0
    """Matmul and attention time on the slowest rank, recompute included."""
    exposed_comm: float = 0.0
    """Communication left after overlap."""
    other: float = 0.0
    """Elementwise and optimizer traffic, host overhead per op, and offload."""
    elementwise: float = 0.0
    """Of ``other``: the elementwise traffic, at the profile's factor."""
    encoders: float = 0.0
    """Of ``compute`` (inference): the clip's VAE encode/decode and wav2vec2 audio encoding."""
    comm_total: dict[str, float] = field(default_factory=dict)
    """Time of each collective kind before overlap."""
    comm_exposed: dict[str, float] = field(default_factory=dict)
    """What of it stays exposed."""
    memory: dict[str, float] = field(default_factory=dict)
    """Bytes per rank: params, grads, optimizer, gathered, activations (``memory_total`` is their peak)."""
    memory_phases: dict[str, float] = field(default_factory=dict)
    """Training: bytes held on top of the weights and optimizer state in each phase of the step, which do
    not all peak together (the step frees its gradients before the forward, and backward builds them as it
    frees activations)."""
    saved_activations: float = 0.0
    """Bytes of activations the forward saves for backward (what saved-tensor hooks count), per rank."""
    model_flops: float = 0.0
    """FLOPs of the iteration across all ranks, without recompute."""
    capacity: float = 0.0
    """Device memory of the profile."""
    peak_flops: float = 0.0
    """Profile peak."""
    notes: list[str] = field(default_factory=list)
    """Caveats."""

    @property
    def time(self) -> float:
        return self.compute + self.exposed_comm + self.other

    @property
    def memory_total(self) -> float:
        """Peak bytes per rank: the weights and optimizer state plus the largest of ``memory_phases`` (all of
        ``memory`` at once where no phases are given)."""
        if not self.memory_phases:
            return sum(self.memory.values())
        return self.memory["params"] + self.memory["optimizer"] + max(self.memory_phases.values())

    @property
    def peak_phase(self) -> str:
        """The phase of the step at which memory peaks ("" where none is modelled)."""
        return max(self.memory_phases, key=self.memory_phases.get) if self.memory_phases else ""

    @property
    def fits(self) -> bool:
        return self.memory_total <= self.capacity

    @property
    def fit(self) -> str:
        """"yes"; "tight" when the predicted peak is within ``MEMORY_MARGIN`` of the capacity, so the model's
        error decides it; or "NO"."""
        if not self.fits:
            return "NO"
        return "tight" if self.memory_total > (1 - MEMORY_MARGIN) * self.capacity else "yes"

    @property
    def mfu(self) -> float:
        return self.model_flops / (self.time * self.strategy.world_size * self.peak_flops)

    @property
    def samples_per_s_per_gpu(self) -> float:
        return self.global_batch / self.time / self.strategy.world_size


# ---- communication ------------------------------------------------------------------------------------


def collective_time(kind: str, nbytes: float, p: int, link: Link) -> float:
    """Seconds for one collective over p ranks of an ``nbytes`` buffer (the whole gathered/scattered buffer for
    all_gather/reduce_scatter, one rank's input for all_to_all, the message for p2p)."""
    if kind not in COLLECTIVE_KINDS:
        raise PlanError(f"unknown collective kind {kind!r}; known: {', '.join(COLLECTIVE_KINDS)}")
    if p <= 1 or nbytes <= 0:
        return 0.0
    bandwidth, latency = link.cost(kind)
    if kind == "p2p":
        return latency + nbytes / bandwidth
    steps = 2 if kind == "all_reduce" and kind not in link.kinds else 1  # pooled: a reduce-scatter, an all-gather
    return steps * ((p - 1) * latency + (p - 1) / p * nbytes / bandwidth)


def group_link(hw: HardwareProfile, span: int) -> Link:
    """The link a group of consecutive-span ranks crosses: NVLink if it fits in one node, else the network."""
    return hw.intra_node if span <= hw.gpus_per_node else hw.inter_node


# ---- compute ------------------------------------------------------------------------------------------


def block_ops(cfg: WanS2VConfig, layout: SequenceLayout, batch: int, ulysses: int, ring: int) -> list[Op]:
    """One block's forward on the most loaded rank."""
    d, f, t = cfg.dim, cfg.ffn_dim, cfg.text_len
    cp = ulysses * ring
    s_pad = -(-layout.total // cp) * cp
    s_loc = s_pad // cp
    chunk = s_pad // ring  # tokens per ring step after the Ulysses all-to-all, on heads / ulysses heads
    return [Op("self q/k/v/o", "matmul", 2 * batch * s_loc * d * d, 4),
            Op("self attention", "attention", 4 * batch * chunk * chunk * d / ulysses, ring),
            Op("cross q/o", "matmul", 2 * batch * s_loc * d * d, 2),
            Op("cross k/v (text)", "matmul", 2 * batch * t * d * d, 2),
            Op("cross attention", "attention", 4 * batch * s_loc * t * d),
            Op("ffn", "matmul", 2 * batch * s_loc * d * f, 2)]


def injection_ops(cfg: WanS2VConfig, layout: SequenceLayout, batch: int, cp: int) -> list[Op]:
    """One audio injection's forward on the most loaded rank (its noisy tokens, padded to whole latent frames)."""
    d = cfg.dim
    frames = injection_frames(layout, cp)
    n_loc = frames * layout.tokens_per_frame  # the rank's noisy tokens, padded to whole frames
    tok = cfg.num_audio_token + 1
    ops = [Op("audio q/o", "matmul", 2 * batch * n_loc * d * d, 2),
           Op("audio k/v", "matmul", 2 * batch * frames * tok * d * d, 2),
           Op("audio attention", "attention", 4 * batch * n_loc * tok * d)]
    if cfg.enable_adain:
        ops.append(Op("audio AdaLN", "matmul", 2 * batch * frames * d * 2 * d))
    return ops


def unit_ops(cfg: WanS2VConfig, layout: SequenceLayout, batch: int, ulysses: int, ring: int) -> list[list[Op]]:
    """The ops of each FSDP unit in execution order: every block, each followed by its injection if any
    (the order of ``parallel.parallelize.fsdp_units``)."""
    out = []
    for i in range(cfg.num_layers):
        out.append(block_ops(cfg, layout, batch, ulysses, ring))
        if i in cfg.audio_inject_layers:
            out.append(injection_ops(cfg, layout, batch, ulysses * ring))
    return out


def op_time(op: Op, hw: HardwareProfile, backward: bool = False) -> float:
    """Seconds of the op's calls in one layer's forward, or in its backward (without recompute)."""
    if op.kind == "matmul":
        return op.calls * (2 if backward else 1) * op.flops / (hw.peak_flops * hw.matmul(op.flops))
    if not backward:
        return op.calls * op.flops / (hw.peak_flops * hw.attention(op.flops))
    curve = hw.attention_backward or hw.attention
    return op.calls * ATTENTION_BACKWARD_FLOPS * op.flops / (hw.peak_flops * curve(op.flops))


def outside_layers_flops(cfg: WanS2VConfig, layout: SequenceLayout, ff: ForwardFlops | None = None) -> float:
    """Forward FLOPs of one clip outside the FSDP units: embeddings, FramePack, the audio encoder, text and time
    embeddings, head (the whole clip, on every rank)."""
    ff = forward_flops(cfg, layout) if ff is None else ff
    layers = sum(o.flops * o.calls for ops in unit_ops(cfg, layout, 1, 1, 1) for o in ops)
    if ff.total - layers < -1e-9 * ff.total:  # a clamp here once hid a formula that was always negative
        raise AssertionError(f"the units' FLOPs ({layers:.4g}) exceed the whole forward's ({ff.total:.4g}): "
                             f"analytic.forward_flops and unit_ops disagree")
    return max(0.0, ff.total - layers)


def _layer_times(cfg: WanS2VConfig, layout: SequenceLayout, micro: int, st: Strategy, hw: HardwareProfile,
                 ff: ForwardFlops) -> tuple[list[float], list[float], list[float], float]:
    """Forward, backward and AC-recompute seconds of each FSDP unit on the most loaded rank, and the forward
    seconds of the matmuls outside the units (embeddings, audio encoder, FramePack, head: replicated on every
    rank; their backward is twice that). A parallelized job (world > 1) keeps the self-attention's outputs
    through checkpointing (``parallel.checkpointing``): its recompute skips that op."""
    units = unit_ops(cfg, layout, micro, st.ulysses, st.ring)
    fwd = [sum(op_time(o, hw) for o in ops) for ops in units]
    bwd = [sum(op_time(o, hw, backward=True) for o in ops) for ops in units]
    kept = {"self attention"} if st.world_size > 1 else set()
    recompute = [sum(op_time(o, hw) for o in ops if o.name not in kept) if st.ac else 0.0 for ops in units]
    outside_flops = micro * outside_layers_flops(cfg, layout, ff)
    return fwd, bwd, recompute, outside_flops / (hw.peak_flops * hw.matmul(outside_flops / 16))


def elementwise_seconds(cfg: WanS2VConfig, layout: SequenceLayout, micro: int, st: Strategy, hw: HardwareProfile,
                        training: bool = True) -> float:
    """Seconds of elementwise traffic on the most loaded rank, before ``hw.elementwise_factor``, at the
    profile's elementwise rate: the bytes counted from the model in the strategy's dtype
    (``analytic.elementwise_traffic``) of the preparation (the whole clip, on every rank) and of the layers and
    head (the busiest rank's share), in training their backward and under AC the layers' forward once more;
    plus the context-parallel glue (ring merges and accumulators, Ulysses packing) of one micro-batch. The glue
    is not recomputed under AC: checkpointing keeps the attention's outputs."""
    tr = elementwise_traffic(cfg, layout, st.dtype)
    s_loc = -(-layout.total // st.cp)
    # the busiest rank's share of each stage: blocks by its tokens; injections by its noisy tokens padded to
    # whole frames; the head by its noisy tokens
    block = s_loc / layout.total
    injection = injection_frames(layout, st.cp) * layout.tokens_per_frame / layout.noisy
    head = min(s_loc, layout.noisy) / layout.noisy
    layers_fwd = tr.layers_forward(cfg, block, injection)
    nbytes = tr.prepare_forward + layers_fwd + head * tr.head_forward
    if training:
        nbytes += (tr.prepare_backward + tr.layers_backward(cfg, block, injection) + head * tr.head_backward
                   + (layers_fwd if st.ac else 0.0))
    glue = 0.0  # bytes per element of the rank's [tokens, dim] share, per layer
    if st.ring > 1:
        once, per_step = RING_FORWARD_BYTES[st.dtype]
        glue += once + per_step * (st.ring - 1)
        if training:
            once, per_step = RING_BACKWARD_BYTES[st.dtype]
            glue += once + per_step * st.ring
    if st.ulysses > 1:  # 4 all-to-alls forward (q, k, v, out), 4 backward
        glue += st.elem_bytes * ULYSSES_PACK_PASSES * 4 * (2 if training else 1)
    nbytes += glue * s_loc * cfg.dim * cfg.num_layers
    return micro * nbytes / hw.elementwise_rate


def toy_config(cfg: WanS2VConfig, heads: int = 2) -> WanS2VConfig:
    """``cfg``'s structure (layers, injections, audio, FramePack) at widths where the host's per-op cost is most
    of a step: 16 per head, ``heads`` heads."""
    return dataclasses.replace(cfg, dim=16 * heads, num_heads=heads, ffn_dim=32, text_dim=16, text_len=16,
                               freq_dim=16, audio_dim=16)


def toy_training(cfg: WanS2VConfig, ac: bool, with_motion: bool, parallel: ParallelConfig | None = None):
    """(step function, model, optimizer, batch, train config) of a float32 step of :func:`toy_config` on the
    tiny preset's clip, after a first step has created the optimizer state; ``parallel`` needs a process group
    of its world size (the fake one will do)."""
    import torch

    from ..model import WanS2V, get_preset
    from ..model.flow import TrainConfig, make_optimizer, synthetic_batch, train_step

    toy = toy_config(cfg, max(2, parallel.ulysses if parallel is not None else 2))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = WanS2V(toy)
        step = train_step
        if parallel is not None:
            from ..parallel import parallelize
            from ..parallel.train import parallel_train_step

            parallelize(model, parallel, "cpu")
            step = parallel_train_step
        train = TrainConfig(dtype="float32", activation_checkpointing=ac)
        opt = make_optimizer(model, train)
        batch = synthetic_batch(toy, dataclasses.replace(get_preset("tiny").clip, with_motion=with_motion), 1)
        step(model, opt, batch, 0, train)
    return step, model, opt, batch, train


def _op_counts(cfg: WanS2VConfig, ac: bool, with_motion: bool,
               parallel: ParallelConfig | None) -> tuple[int, int, int]:
    """(ops per micro-batch's forward and backward, ops of the optimizer step, ops of one no-grad forward) of
    the toy step."""
    import torch

    from ..model.flow import batch_forward

    step, model, opt, batch, train = toy_training(cfg, ac, with_motion, parallel)
    one = count_dispatched_ops(lambda: step(model, opt, batch, 1, train))
    per_micro = count_dispatched_ops(lambda: step(model, opt, [batch, batch], 2, train)) - one
    t = torch.full((batch.latents.shape[0],), 500.0)
    model.eval()
    with torch.no_grad():
        forward = count_dispatched_ops(lambda: batch_forward(model, batch, t))
    model.train()
    return per_micro, one - per_micro, forward


def op_count_rank(rank: int, world: int, cfg: WanS2VConfig, ac: bool, with_motion: bool,
                  parallel: ParallelConfig) -> tuple[int, int, int]:
    """Called by ``run_ranks(op_count_rank, 1, ...)``: rank 0 of ``parallel``'s world under the fake process
    group (every collective a no-op of the right shapes), counting its step's ops."""
    from ..parallel.launch import join_fake_group

    join_fake_group(parallel.world_size)
    return _op_counts(cfg, ac, with_motion, parallel)


def _op_counts_under_fake_group(cfg: WanS2VConfig, ac: bool, with_motion: bool,
                                parallel: ParallelConfig) -> tuple[int, int, int]:
    """:func:`op_count_rank` in this process when it has no process group of its own (then it leaves none),
    else in a spawned one: a spawn costs torch's import, seconds per strategy a validation predicts."""
    import torch.distributed as dist

    if dist.is_initialized():
        from ..parallel.launch import run_ranks

        return tuple(run_ranks(op_count_rank, 1, cfg, ac, with_motion, parallel, timeout_s=300)[0])
    try:
        return op_count_rank(0, 1, cfg, ac, with_motion, parallel)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@functools.lru_cache(maxsize=32)
def _rank0_op_counts(cfg: WanS2VConfig, ac: bool, with_motion: bool,
                     degrees: tuple[int, int, int]) -> tuple[int, int, int]:
    if degrees == (1, 1, 1):
        return _op_counts(cfg, ac, with_motion, None)
    parallel = ParallelConfig(*degrees, ac=ac)
    try:
        return _op_counts_under_fake_group(cfg, ac, with_motion, parallel)
    except Exception as e:  # the toy clip cannot be split this way: say so, not crash deep
        raise PlanError(f"could not count the host's ops of dp_shard x ulysses x ring = {degrees} on the toy "
                        f"model ({e}); use a profile with op_overhead 0 for this strategy") from e


def step_op_count(cfg: WanS2VConfig, ac: bool, with_motion: bool = True,
                  degrees: tuple[int, int, int] = (1, 1, 1)) -> tuple[int, int]:
    """(ops per micro-batch's forward and backward, ops of the optimizer step) that rank 0 of a training step
    dispatches with ``degrees`` (dp_shard, ulysses, ring), counted by running the step on :func:`toy_config`
    (as many heads as the Ulysses degree, at least 2): the count depends on the structure, not the widths.
    Several ranks are counted under the fake process group, so FSDP's copies, DTensor's
    optimizer and the context-parallel glue are in the count; collectives are not. Autocast's casts are not
    in it. Raises PlanError when the toy step cannot be split so."""
    per_micro, optimizer, _ = _rank0_op_counts(cfg, ac, with_motion, degrees)
    return per_micro, optimizer


def forward_op_count(cfg: WanS2VConfig, with_motion: bool = True, ulysses: int = 1, ring: int = 1) -> int:
    """Ops that rank 0 dispatches in one no-grad forward of the DiT (one of the two forwards of a CFG step),
    counted as :func:`step_op_count` counts (with context parallelism, on the harness's parallelized toy:
    FSDP's unsharding copies are in it)."""
    return _rank0_op_counts(cfg, False, with_motion, (1, ulysses, ring))[2]


def context_parallel_comm(cfg: WanS2VConfig, layout: SequenceLayout, micro: int, st: Strategy,
                          hw: HardwareProfile, notes: list[str], training: bool = True
                          ) -> tuple[dict[str, float], dict[str, float]]:
    """(total, exposed) seconds per collective kind of the Ulysses all-to-alls and ring exchanges of one
    micro-batch's forward (and backward when ``training``) over every layer, before the profile's overlap
    override."""
    total: dict[str, float] = {}
    exposed: dict[str, float] = {}
    elem = st.elem_bytes
    s_loc = -(-layout.total // st.cp)
    x = micro * s_loc * cfg.dim * elem  # one q/k/v/out tensor on this rank
    passes = 2 if training else 1
    if st.ulysses > 1:  # q, k, v in and out back, forward; their gradients, backward
        a2a = 4 * passes * cfg.num_layers * collective_time("all_to_all", x, st.ulysses, group_link(hw, st.ulysses))
        total["all_to_all"] = exposed["all_to_all"] = a2a
    if st.ring > 1:
        link = group_link(hw, st.ulysses * st.ring)
        chunk = -(-layout.total // st.cp) * st.cp // st.ring
        step_op = Op("", "attention", 4 * micro * chunk * chunk * cfg.dim / st.ulysses)
        step_attn, step_attn_bwd = op_time(step_op, hw), op_time(step_op, hw, backward=True)
        kv = 2 * x
        acc = 2 * micro * s_loc * cfg.dim * 4  # dK, dV accumulators in float32
        fwd_p2p = collective_time("p2p", kv, 2, link)
        bwd_p2p = collective_time("p2p", kv + acc, 2, link)
        tot = (st.ring - 1) * fwd_p2p
        exp = (st.ring - 1) * max(0.0, fwd_p2p - step_attn)
        if training:
            home = collective_time("p2p", acc, 2, link)  # the accumulators' last hop home
            tot += (st.ring - 1) * bwd_p2p + home
            exp += (st.ring - 1) * max(0.0, bwd_p2p - step_attn_bwd) + home
        total["ring_p2p"], exposed["ring_p2p"] = tot * cfg.num_layers, exp * cfg.num_layers
        if hw.comm_overlaps_compute and exp > 0.5 * tot:
            notes.append(f"ring: a K/V step ({fwd_p2p * 1e3:.2f} ms) no longer hides behind its block attention "
                         f"({step_attn * 1e3:.2f} ms)")
    return total, exposed


# ---- FSDP units ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def fsdp_unit_params(cfg: WanS2VConfig) -> tuple[tuple[int, ...], int]:
    """Parameters of each FSDP unit in forward order (blocks with their injector pairs) and of the root (cached:
    a 14b meta model takes about a second to build)."""
    from ..parallel.parallelize import fsdp_units

    model = meta_model(cfg)
    units = fsdp_units(model)
    sizes = [sum(p.numel() for m in unit for p in m.parameters()) for unit in units]
    in_units = {id(p) for unit in units for m in unit for p in m.parameters()}
    root = sum(p.numel() for p in model.parameters() if id(p) not in in_units)
    return tuple(sizes), root


# ---- the prediction -----------------------------------------------------------------------------------


def _check_degrees(cfg: WanS2VConfig, layout: SequenceLayout, st: Strategy) -> None:
    """The degrees, checked as ``parallel.ParallelConfig`` checks a real job (Ulysses dividing the heads, no more
    context-parallel ranks than tokens)."""
    from ..parallel.mesh import ParallelConfigError

    try:
        st.parallel_config().validate(st.world_size, cfg.num_heads, layout.total)
    except ParallelConfigError as exc:
        raise PlanError(str(exc)) from None


def _check(cfg: WanS2VConfig, layout: SequenceLayout, st: Strategy, global_batch: int) -> int:
    """Micro-batch clips per replica, after :func:`_check_degrees`."""
    _check_degrees(cfg, layout, st)
    if not isinstance(st.grad_accum, int) or st.grad_accum < 1:
        raise PlanError(f"Strategy.grad_accum={st.grad_accum!r} must be a positive integer")
    if st.dtype not in ("bfloat16", "float32"):
        raise PlanError(f"dtype {st.dtype!r}: choose bfloat16 or float32")
    per_replica = global_batch / st.dp
    micro = per_replica / st.grad_accum
    if micro != int(micro) or micro < 1:
        raise PlanError(f"global batch {global_batch} does not split into {st.dp} data-parallel replicas x "
                        f"{st.grad_accum} micro-batches of whole clips; use a global batch that is a multiple of "
                        f"{st.dp * st.grad_accum}")
    return int(micro)


def _charge_rank_skew(total: dict[str, float], exposed: dict[str, float], pred: Prediction,
                      hw: HardwareProfile) -> None:
    """Every stretch of a rank's work ends in a collective that waits for the slowest rank: the profile's
    ``rank_skew`` of that work, exposed (on shared CPU cores; 0 on GPU profiles)."""
    if hw.rank_skew > 0:
        total["rank_skew"] = exposed["rank_skew"] = hw.rank_skew * (pred.compute + pred.other)


def _set_training_memory(pred: Prediction, cfg: WanS2VConfig, st: Strategy, act: ActivationBytes,
                         units: tuple[int, ...], root: int) -> None:
    """Fill ``pred``'s memory per rank (``memory``, ``memory_phases``, the fit notes) from the FSDP units'
    parameters and the micro-batch's activations."""
    p, rep = st.shard_group_size, st.dp_replicate
    elem = st.elem_bytes
    n_params = sum(units) + root
    pred.memory = {"params": 4 * n_params / p, "grads": 4 * n_params / p, "optimizer": 8 * n_params / p}
    if p > 1 or rep > 1:
        pred.memory["gathered"] = (2 * max(units) + root) * elem + max(units) * 4
    elif st.dtype == "bfloat16":
        pred.memory["gathered"] = 0.0
    resident = act.peak if not st.offload_activations else \
        (act.outside + act.kept + 2 * act.layers / cfg.num_layers)
    pred.memory["activations"] = resident
    m = pred.memory
    # Activations peak early in backward, beside few gradients (all of them only when micro-batches accumulate
    # them); the optimizer step holds every gradient and one float32 state's worth of temporaries (foreach
    # AdamW's sqrt of the second moment). Between the two, backward frees activations as it builds gradients:
    # on real CPU steps (tests/test_perfmodel.py) neither the sum nor an end-of-backward phase of all the
    # gradients, the outside activations and a recomputed block came closer than these two.
    pred.memory_phases = {
        "forward and backward": m.get("gathered", 0.0) + resident + (m["grads"] if st.grad_accum > 1 else 0.0),
        "optimizer step": m["grads"] + 4 * n_params / p}
    if not pred.fits:
        pred.notes.append(f"does not fit: {fmt_gib(pred.memory_total)} GiB per rank > {fmt_gib(pred.capacity)} GiB")
    elif pred.fit == "tight":
        pred.notes.append(f"a tight fit: {fmt_gib(pred.memory_total)} GiB per rank of {fmt_gib(pred.capacity)} GiB, "
                          f"within the model's {MEMORY_MARGIN:.0%} error")


def predict_training_memory(cfg: WanS2VConfig, layout: SequenceLayout, st: Strategy, global_batch: int,
                            capacity: float = float("inf")) -> Prediction:
    """Only the memory per rank of :func:`predict_training` (the same figures, without its time): no
    hardware profile, and none of the op counting and tracing that the time takes seconds for."""
    micro = _check(cfg, layout, st, global_batch)
    pred = Prediction(st, layout.total, global_batch, capacity=capacity)
    act = activation_bytes(cfg, layout, micro, st.dtype, st.ac, st.ulysses, st.ring, parallelized=st.world_size > 1)
    pred.saved_activations = act.saved
    units, root = fsdp_unit_params(cfg)
    _set_training_memory(pred, cfg, st, act, units, root)
    return pred


def predict_training(cfg: WanS2VConfig, layout: SequenceLayout, st: Strategy, hw: HardwareProfile,
                     global_batch: int) -> Prediction:
    """One training iteration (``grad_accum`` micro-batches, then the optimizer step)."""
    micro = _check(cfg, layout, st, global_batch)
    pred = Prediction(st, layout.total, global_batch, capacity=hw.memory_capacity, peak_flops=hw.peak_flops)
    elem = st.elem_bytes

    # compute per layer, forward and backward, and what lies outside the layers (replicated on every rank)
    ff = forward_flops(cfg, layout)
    fwd_layers, bwd_layers, recompute, fwd_outside = _layer_times(cfg, layout, micro, st, hw, ff)
    pred.compute = st.grad_accum * (sum(fwd_layers) + sum(bwd_layers) + 3 * fwd_outside + sum(recompute))
    pred.model_flops = global_batch * 3 * ff.total

    # elementwise traffic and offload
    elementwise = elementwise_seconds(cfg, layout, micro, st, hw)
    pred.elementwise = st.grad_accum * elementwise * hw.elementwise_factor
    pred.other = pred.elementwise
    n_params = parameter_count(cfg)
    pred.other += OPTIMIZER_PASSES * 4 * n_params / st.shard_group_size / hw.memory_bandwidth
    per_op = hw.op_overhead_sharded if st.world_size > 1 else hw.op_overhead
    if per_op > 0:
        # HSDP dispatches as FSDP over its data-parallel ranks, plus one all-reduce per unit (not counted)
        per_micro, optimizer_ops = step_op_count(cfg, st.ac, layout.motion > 0, (st.dp, st.ulysses, st.ring))
        pred.other += per_op * (st.grad_accum * per_micro + optimizer_ops)
    act = activation_bytes(cfg, layout, micro, st.dtype, st.ac, st.ulysses, st.ring, parallelized=st.world_size > 1)
    pred.saved_activations = act.saved
    if st.offload_activations:
        move = act.layers / hw.host_link
        fwd, bwd = sum(fwd_layers) + fwd_outside, sum(bwd_layers) + 2 * fwd_outside
        pred.other += st.grad_accum * (max(0.0, move - fwd) + max(0.0, move - bwd))
        pred.notes.append(f"activation offload moves {fmt_gib(act.layers)} GiB per micro-batch each way over the "
                          f"host link ({hw.host_link / 1e9:.0f} GB/s), overlapped with compute where it can be")

    # context-parallel communication, per layer
    cp_total, cp_exposed = context_parallel_comm(cfg, layout, micro, st, hw, pred.notes)
    cp_total = {k: v * st.grad_accum for k, v in cp_total.items()}
    cp_exposed = {k: v * st.grad_accum for k, v in cp_exposed.items()}

    # FSDP inside a replica group: gathers in forward and backward, and a reduce-scatter in backward, for every
    # micro-batch (FSDP2 syncs gradients on every backward; the model's grads stay sharded); with HSDP each
    # unit's reduced shard is then all-reduced across the replica groups, behind the same backward
    units, root = fsdp_unit_params(cfg)
    p, rep = st.shard_group_size, st.dp_replicate
    if p > 1 or rep > 1:
        link = group_link(hw, p)
        across = group_link(hw, st.world_size)  # the replica groups' ranks lie p apart: the widest span
        ag = [collective_time("all_gather", u * elem, p, link) for u in units]
        rs = [collective_time("reduce_scatter", u * 4, p, link) for u in units]
        ar = [collective_time("all_reduce", u * 4 / p, rep, across) for u in units]
        ag_root = collective_time("all_gather", root * elem, p, link)
        rs_root = collective_time("reduce_scatter", root * 4, p, link)
        ar_root = collective_time("all_reduce", root * 4 / p, rep, across)
        exp_f = ag_root + ag[0] + sum(max(0.0, ag[i] - fwd_layers[i - 1]) for i in range(1, len(units)))
        layer_bwd = [b + r for b, r in zip(bwd_layers, recompute)]
        exp_b = ag[-1] + sum(max(0.0, ag[i] - layer_bwd[i + 1]) for i in range(len(units) - 1))
        # a unit's gradient reduction hides behind the backward of the unit before it; the first unit's and the
        # root's come after the last backward compute. A unit's reduce-scatter and all-reduce are charged one
        # after the other (an upper bound: FSDP2 may run unit i's all-reduce beside unit i-1's reduce-scatter)
        red = [a + b for a, b in zip(rs, ar)]
        exp_red = red[0] + rs_root + ar_root + sum(max(0.0, red[i] - layer_bwd[i - 1]) for i in range(1, len(units)))
        shares = (sum(rs) + rs_root, sum(ar) + ar_root)
        if p > 1:
            cp_total["fsdp_all_gather"] = st.grad_accum * (2 * sum(ag) + ag_root)
            cp_exposed["fsdp_all_gather"] = st.grad_accum * (exp_f + exp_b)
        for kind, share in zip(("fsdp_reduce_scatter", "hsdp_all_reduce"), shares):
            if share > 0:  # the exposed reduction split in proportion to each kind's total
                cp_total[kind] = st.grad_accum * share
                cp_exposed[kind] = st.grad_accum * exp_red * share / sum(shares)
    if not hw.comm_overlaps_compute:
        cp_exposed = dict(cp_total)
    if st.world_size > 1:
        _charge_rank_skew(cp_total, cp_exposed, pred, hw)
    pred.comm_total, pred.comm_exposed = cp_total, cp_exposed
    pred.exposed_comm = sum(cp_exposed.values())

    _set_training_memory(pred, cfg, st, act, units, root)
    return pred


def encoder_seconds(cfg: WanS2VConfig, layout: SequenceLayout, hw: HardwareProfile) -> tuple[float, str]:
    """Seconds, and how they were counted, of one clip's VAE and audio work in the official loop: a clip with
    motion encodes the 73-frame motion buffer and decodes [motion latents | clip]; the first clip decodes
    [reference latent | clip]; wav2vec2-large encodes the clip's audio. Convolutions are taken at the matmul
    curve's efficiency for their mean call size (an assumption: cuDNN's implicit GEMM on GPU)."""
    from .analytic import audio_encoder_flops, vae_flops

    f, gh, gw = layout.grid
    height, width = gh * cfg.patch_size[1] * 8, gw * cfg.patch_size[2] * 8
    motion = layout.motion > 0
    enc, dec, calls = vae_flops(height, width, cfg.motion_frames if motion else 0,
                                f + (cfg.motion_latent_frames if motion else 1))
    audio, audio_calls = audio_encoder_flops(4 * f / 16)  # 4 video frames per latent frame, 16 fps

    def seconds(flops: float, n: int) -> float:
        return flops / (hw.peak_flops * hw.matmul(flops / max(1, n)))

    how = (f"VAE {'encode of the 73-frame motion buffer, ' if motion else ''}decode of "
           f"{f + (cfg.motion_latent_frames if motion else 1)} latent frames at {width}x{height} "
           f"({(enc + dec) / 1e12:.0f} TFLOP) and wav2vec2-large on {4 * f / 16:g} s of audio "
           f"({audio / 1e9:.0f} GFLOP), on every rank")
    return seconds(enc + dec, calls) + seconds(audio, audio_calls), how


def predict_inference(cfg: WanS2VConfig, layout: SequenceLayout, st: Strategy, hw: HardwareProfile,
                      steps: int = 40, cfg_scale: bool = True, encoders: bool = True,
                      batch: int = 1) -> Prediction:
    """One sampled clip: ``steps`` denoising steps of 2 forwards (CFG) on all ranks together (dp_shard 1), plus
    the clip's VAE and audio encoding (``encoders``; the official loop runs them on every rank). ``batch``
    clips sampled together (the official loop samples one); the host's per-op overhead is charged per
    forward."""
    if st.dp != 1:
        raise PlanError(f"inference splits one clip over context-parallel ranks; use dp_shard=1 and "
                        f"dp_replicate=1 (got {st.dp_shard} and {st.dp_replicate})")
    if not isinstance(batch, int) or batch < 1:
        raise PlanError(f"inference batch {batch!r} must be a positive number of clips")
    _check_degrees(cfg, layout, st)  # a Ulysses degree that does not divide the heads was predicted silently
    forwards = steps * (2 if cfg_scale else 1)
    pred = Prediction(st, layout.total, batch, capacity=hw.memory_capacity, peak_flops=hw.peak_flops)
    ff = forward_flops(cfg, layout)
    fwd_layers, _, _, fwd_outside = _layer_times(cfg, layout, batch, Strategy(1, st.ulysses, st.ring, False), hw,
                                                 ff)
    pred.compute = forwards * (sum(fwd_layers) + fwd_outside)
    if encoders:
        pred.encoders, how = encoder_seconds(cfg, layout, hw)
        pred.encoders *= batch
        pred.compute += pred.encoders
        pred.notes.append(f"compute includes {pred.encoders:.2f} s of {how}" + (f", x{batch} clips" if batch > 1
                                                                                else ""))
    pred.elementwise = forwards * elementwise_seconds(cfg, layout, batch, st, hw, training=False) * \
        hw.elementwise_factor
    pred.other = pred.elementwise
    if hw.op_overhead > 0:
        pred.other += forwards * hw.op_overhead * forward_op_count(cfg, layout.motion > 0, st.ulysses, st.ring)
    # weights are replicated (no FSDP gathers, no gradients): only the forward's context-parallel exchanges
    total, exposed = context_parallel_comm(cfg, layout, batch, st, hw, pred.notes, training=False)
    if not hw.comm_overlaps_compute:
        exposed = dict(total)
    pred.comm_total = {k: forwards * v for k, v in total.items()}
    pred.comm_exposed = {k: forwards * v for k, v in exposed.items()}
    if st.cp > 1:
        _charge_rank_skew(pred.comm_total, pred.comm_exposed, pred, hw)
    pred.exposed_comm = sum(pred.comm_exposed.values())
    pred.model_flops = forwards * batch * ff.total  # the DiT's: MFU is the transformer's
    pred.memory = {"params": parameter_count(cfg) * st.elem_bytes,
                   "activations": batch * 4 * 4 * cfg.dim * -(-layout.total // st.cp)}
    return pred


__all__ = [
    "ATTENTION_BACKWARD_FLOPS",
    "MEMORY_MARGIN",
    "OPTIMIZER_PASSES",
    "RING_BACKWARD_BYTES",
    "RING_FORWARD_BYTES",
    "ULYSSES_PACK_PASSES",
    "Op",
    "PlanError",
    "Prediction",
    "Strategy",
    "block_ops",
    "collective_time",
    "context_parallel_comm",
    "elementwise_seconds",
    "encoder_seconds",
    "fmt_gib",
    "forward_op_count",
    "fsdp_unit_params",
    "group_link",
    "injection_ops",
    "op_time",
    "predict_inference",
    "predict_training",
    "predict_training_memory",
    "step_op_count",
    "unit_ops",
]
