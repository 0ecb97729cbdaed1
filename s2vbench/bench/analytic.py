"""Closed-form costs of Wan-S2V, from the real shapes. The performance model builds on these.

FLOPs count a multiply-add as 2. A forward's FLOPs split into
``attention`` (the softmax(QK^T)V cores of self-attention, 4 S^2 D per layer),
``cross_attention`` (the cores of text and audio cross-attention) and
``matmul`` (every linear and convolution: projections, FFN, embeddings, FramePack, audio encoder, head).
A training step costs 3x its forward (backward = 2x), plus one more forward of the blocks with activation
checkpointing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from dataclasses import dataclass

from ..model.config import WanS2VConfig
from ..model.sequence import FRAMEPACK_KERNELS, SequenceLayout, audio_conv_lengths


@dataclass(frozen=True)
class ForwardFlops:
    """FLOPs of one forward pass of one sample."""

    attention: float
    """Self-attention cores over the whole sequence."""
    cross_attention: float
    """Text and audio cross-attention cores."""
    matmul: float
    """All linear layers and convolutions."""

    @property
    def total(self) -> float:
        return self.attention + self.cross_attention + self.matmul

    @property
    def attention_to_matmul(self) -> float:
        return self.attention / self.matmul


def forward_flops(cfg: WanS2VConfig, layout: SequenceLayout, infer_frames: int | None = None) -> ForwardFlops:
    """Forward FLOPs of one clip with the given token layout (batch 1)."""
    d, s, n = cfg.dim, layout.total, layout.noisy
    frames = layout.grid[0] * cfg.patch_size[0]
    text = cfg.text_len
    tok_audio = cfg.num_audio_token + 1
    per_block = (2 * s * d * d * 4                  # q, k, v, o of self-attention
                 + 2 * s * d * d * 2                # q, o of text cross-attention
                 + 2 * text * d * d * 2             # k, v of text cross-attention
                 + 2 * s * d * cfg.ffn_dim * 2)     # FFN
    per_injection = (2 * n * d * d * 2                        # q, o on noisy tokens
                     + 2 * frames * tok_audio * d * d * 2     # k, v on the frames' audio tokens
                     + (2 * frames * d * 2 * d if cfg.enable_adain else 0))  # AdaLN shift/scale
    injections = len(cfg.audio_inject_layers)
    patch = cfg.in_dim * cfg.patch_numel
    embed = 2 * (n + layout.ref) * patch * d
    if cfg.cond_dim:
        embed += 2 * n * cfg.cond_dim * cfg.patch_numel * d
    for (gt, gh, gw), kernel in zip(layout.motion_grids, FRAMEPACK_KERNELS):
        embed += 2 * gt * gh * gw * cfg.in_dim * math.prod(kernel) * d
    embed += 2 * text * (cfg.text_dim * d + d * d)               # text embedding MLP
    embed += 2 * 2 * (cfg.freq_dim * d + d * d + d * 6 * d)      # time embedding + projection (t and zero)
    head = 2 * n * d * cfg.out_dim * cfg.patch_numel
    # Audio encoder over 73 + I frames (I = 4F video frames): conv1 at full rate, conv2 at 1/2, conv3 at 1/4.
    t_audio = (infer_frames if infer_frames is not None else 4 * frames) + cfg.motion_frames
    t2, t4 = audio_conv_lengths(t_audio)
    groups = cfg.num_audio_token + (1 if cfg.enable_adain else 0)
    audio = (2 * t_audio * cfg.audio_dim * 3 * (d // 4) * groups
             + 2 * t2 * (d // 4) * 3 * (d // 2) * groups
             + 2 * t4 * (d // 2) * 3 * d * groups
             + (2 * t4 * d * d if cfg.enable_adain else 0))
    matmul = cfg.num_layers * per_block + injections * per_injection + embed + head + audio
    attention = cfg.num_layers * 4 * s * s * d
    cross = cfg.num_layers * 4 * s * text * d + injections * 4 * n * tok_audio * d
    return ForwardFlops(float(attention), float(cross), float(matmul))


__all__ = ["ForwardFlops", "forward_flops"]


# ---- communication volumes ------------------------------------------------------------------------------
# Conventions (the same as the counters in s2vbench.parallel.comm): an all-to-all of an N-byte buffer over p
# ranks sends and receives floor(N (p - 1) / p) bytes per rank (the chunk a rank keeps is not communication);
# a point-to-point exchange sends the bytes of its tensors; an all-reduce counts its payload once.
#
# Worked by hand (Ulysses 2 x ring 2, the tiny model, 416 tokens, batch 1, fp32): each rank holds
# L = 104 tokens, H = 4 heads of D = 16, so one q/k/v/out tensor is X = 1 * 104 * 4 * 16 * 4 B = 26,624 B.
# Per block, forward: 4 all-to-alls of 26,624 * 1/2 = 13,312 B (53,248 B); after them each rank holds
# 2 * 104 tokens x 2 heads (still 26,624 B per tensor), and the ring sends k and v once (r - 1 = 1 step):
# 53,248 B. Backward: 4 more all-to-alls (53,248 B); the ring prefetches k, v once (53,248 B) and passes the
# float32 dK/dV accumulators twice (r = 2 hops: 2 * 53,248 = 106,496 B). Four blocks -> forward
# all_to_all 212,992 B and ring_p2p 212,992 B; backward all_to_all 212,992 B and ring_p2p_bwd 638,976 B.


@functools.lru_cache(maxsize=8)
def meta_model(cfg: WanS2VConfig):
    """The model on the meta device (shapes only), built once per config: the 14b takes seconds to build."""
    import torch

    from ..model import WanS2V

    with torch.device("meta"):
        return WanS2V(cfg)


@dataclass(frozen=True)
class CommVolume:
    """Calls and bytes sent by one rank for one collective kind."""

    calls: int
    bytes_sent: int


def attention_comm_volume(batch: int, local_tokens: int, heads: int, head_dim: int, ulysses: int, ring: int,
                          elem_bytes: int, acc_bytes: int = 4, backward: bool = True) -> dict[str, CommVolume]:
    """One context-parallel self-attention (forward, and backward if asked) on one rank."""
    x = batch * local_tokens * heads * head_dim * elem_bytes  # q, k, v or out on this rank, either layout
    vol: dict[str, CommVolume] = {}
    passes = 2 if backward else 1
    if ulysses > 1:
        vol["all_to_all"] = CommVolume(4 * passes, 4 * passes * (x * (ulysses - 1) // ulysses))
    if ring > 1:
        vol["ring_p2p"] = CommVolume(ring - 1, (ring - 1) * 2 * x)
        if backward:
            acc = x // elem_bytes * acc_bytes
            vol["ring_p2p_bwd"] = CommVolume((ring - 1) + ring, (ring - 1) * 2 * x + ring * 2 * acc)
    return vol


def training_step_comm_volume(cfg: WanS2VConfig, layout: SequenceLayout, batch: int, ulysses: int, ring: int,
                              elem_bytes: int) -> dict[str, CommVolume]:
    """Bytes one rank sends in one training step through our collectives (FSDP2's own are separate).

    Activation checkpointing adds nothing: the attention op's outputs are kept, so recompute never
    communicates. The loss normalisation is one all-reduce of two float64 scalars (token count, loss sum)."""
    cp = ulysses * ring
    local = -(-layout.total // cp)
    per_layer = attention_comm_volume(batch, local, cfg.num_heads, cfg.head_dim, ulysses, ring, elem_bytes,
                                      acc_bytes=max(4, elem_bytes))
    vol = {k: CommVolume(v.calls * cfg.num_layers, v.bytes_sent * cfg.num_layers) for k, v in per_layer.items()}
    vol["all_reduce"] = CommVolume(1, 2 * 8)
    return vol


__all__ += ["CommVolume", "attention_comm_volume", "training_step_comm_volume"]


def fsdp_comm_volume(cfg: WanS2VConfig, world: int, param_bytes: int, reduce_bytes: int,
                     with_motion: bool = True, replicate: int = 1) -> dict[str, CommVolume]:
    """FSDP2's per-rank traffic in one micro-batch's forward and backward with the units of
    ``parallel.parallelize``, sharded over ``world`` ranks (one HSDP replica group when ``replicate`` > 1).

    Each unit's shard is the sum over its parameters of ceil(dim0 / world) * (other dims): FSDP2 pads dim 0
    to a multiple of the world size. Non-root units are all-gathered in the forward and again in the backward
    (resharded after forward); the root once. Every unit's gradients are reduce-scattered once, leaving out
    parameters that got none (FramePack's projectors on a clip without motion); under HSDP each reduced shard
    is then all-reduced across the replica groups (the payload, once). A one-rank group has no gathers or
    reduce-scatters."""
    from ..parallel.parallelize import fsdp_units

    model = meta_model(cfg)

    def shard(params) -> int:
        return sum(-(-p.shape[0] // world) * (p.numel() // p.shape[0]) for p in params)

    units = fsdp_units(model)
    in_units = {id(p) for unit in units for m in unit for p in m.parameters()}
    shards = [shard([p for m in unit for p in m.parameters()]) for unit in units]
    root_params = [p for p in model.parameters() if id(p) not in in_units]
    unused = set() if with_motion else {id(p) for p in model.frame_packer.parameters()}
    root = shard(root_params)
    root_with_grad = shard([p for p in root_params if id(p) not in unused])
    gather = (2 * sum(shards) + root) * param_bytes * (world - 1)
    scatter = (sum(shards) + root_with_grad) * reduce_bytes * (world - 1)
    out = {}
    if world > 1:  # a one-rank shard group (HSDP of whole replicas) gathers and scatters nothing
        out = {"fsdp_all_gather": CommVolume(2 * len(units) + 1, gather),
               "fsdp_reduce_scatter": CommVolume(len(units) + 1, scatter)}
    if replicate > 1:
        out["hsdp_all_reduce"] = CommVolume(len(units) + 1, (sum(shards) + root_with_grad) * reduce_bytes)
    return out


__all__ += ["fsdp_comm_volume"]


def parameter_count(cfg: WanS2VConfig) -> int:
    """Parameters of the model (counted on the meta device: exact, allocation-free)."""
    return sum(p.numel() for p in meta_model(cfg).parameters())


def training_state_bytes(cfg: WanS2VConfig, shards: int = 1, param_bytes: int = 4) -> dict[str, float]:
    """Bytes per rank of parameters, gradients and AdamW's two moments (float32 master state), sharded
    evenly over ``shards`` ranks (FSDP). 14b at one rank: 16.3 G x 4 B = 65.2 GB each for params and grads,
    130.4 GB for the optimizer."""
    n = parameter_count(cfg)
    per = n * param_bytes / shards
    return {"params": per, "grads": per, "optimizer": 2 * n * 4 / shards}


__all__ += ["meta_model", "parameter_count", "training_state_bytes"]


def clip_step_cost(cfg: WanS2VConfig, tokens: int) -> float:
    """Training FLOPs of one clip of ``tokens`` tokens in the bucketing approximation: 6 P n for every
    weight (forward 2 P n, backward 4 P n) plus 12 L d n^2 for self-attention (3 x 4 n^2 d per layer).
    Unlike the token count it grows as n^2, which is what makes equal-token batches unequal in time."""
    if tokens <= 0:
        raise ValueError(f"tokens must be positive, got {tokens}")
    return 6.0 * parameter_count(cfg) * tokens + 12.0 * cfg.num_layers * cfg.dim * float(tokens) ** 2


__all__ += ["clip_step_cost"]


# ---- activation memory --------------------------------------------------------------------------------
# Bytes autograd saves for backward, per token, counted tensor by tensor from one block and one injection
# (dedup by storage; parameters, and autocast's low-precision weight copies, left out). "float32" runs
# everything in float32; "bfloat16" is autocast: linears and attention in bf16, norms, RoPE, modulation and
# the residual stream in float32 (the fp32 islands of model/layers.py).
#   block, float32: 22 [S, d] tensors, 2 [S, ffn], 9 per-token float32 statistics (norm means/rstds), the
#     self- and cross-attention LSEs (h floats each per token) and 4 [text_len, d] text keys/values;
#   block, bfloat16: 14 bf16 + 10 float32 [S, d] tensors, 2 bf16 [S, ffn], the same statistics and LSEs,
#     and 5 bf16 + 1 float32 [text_len, d] tensors;
#   injection: 7 float32 (5 float32 + 1/2 bf16 under autocast) [n, d] tensors on the noisy tokens plus
#     24 (19 under autocast) float32 d-vectors per latent frame (its audio tokens through q/k/v and AdaLN);
#   outside the blocks: the padded text features, the latent inputs (FramePack's whole motion buffer), the last
#     block's whole float32 output (the head's norm reads a slice of it) and 3 [n, d] tensors of the head, and
#     9/4 of the audio features' bytes in the (float32) causal audio encoder.
# Context parallelism adds to each block: Ulysses' attention keeps the all-to-all outputs (q, k, v, and out by
# heads: 4 [S, d] tensors in the compute dtype) and its LSE; the ring keeps its merged float32 LSE.
# With activation checkpointing a layer keeps only its float32 input; backward recomputes one layer at a time.
# A parallelized job's checkpointing (parallel/checkpointing.py) also keeps each self-attention's outputs: out
# and LSE, plus Ulysses' head-split q, k, v, out and LSE. Selective checkpointing holds them in its own cache,
# which saved-tensor hooks do not see.
_BLOCK_BYTES_PER_TOKEN = {"float32": (88, 8, 36, 8), "bfloat16": (68, 4, 36, 8)}  # x d, x ffn, + const, x heads
_BLOCK_TEXT_BYTES = {"float32": 16, "bfloat16": 14}  # x text_len x d
_INJECTION_BYTES = {"float32": (28, 96), "bfloat16": (20, 76)}  # x n x d, x frames x d


def injection_frames(layout: SequenceLayout, cp: int = 1, rank: int | None = None) -> int:
    """Latent frames the audio injection runs on, on context-parallel rank ``rank`` (default: the rank that
    touches the most): a rank's window of noisy tokens is padded to whole frames
    (``model.audio.AudioInjector.inject``)."""
    if rank is not None and not 0 <= rank < cp:
        raise ValueError(f"rank {rank} is not one of the {cp} context-parallel ranks (0 to {cp - 1})")
    s_loc, tpf = -(-layout.total // cp), layout.tokens_per_frame
    most = 0
    for r in range(cp) if rank is None else (rank,):
        start, end = r * s_loc, min((r + 1) * s_loc, layout.noisy)
        if start < end:
            most = max(most, -(-end // tpf) - start // tpf)
    return most


@dataclass(frozen=True)
class ActivationBytes:
    """Activation bytes of one training step on one rank."""

    layers: float
    """Saved by the blocks and their audio injections (only their inputs with activation checkpointing)."""
    outside: float
    """Saved outside the blocks: embeddings, text MLP, audio encoder, head."""
    recompute_peak: float
    """One layer's activations rebuilt during backward under activation checkpointing (0 without)."""
    kept: float = 0.0
    """Held by selective checkpointing's cache under AC (a parallelized job's attention outputs): memory that
    saved-tensor hooks do not see."""

    @property
    def saved(self) -> float:
        """What saved-tensor hooks count in the forward."""
        return self.layers + self.outside

    @property
    def peak(self) -> float:
        return self.saved + self.kept + self.recompute_peak


def activation_bytes(cfg: WanS2VConfig, layout: SequenceLayout, batch: int = 1, dtype: str = "float32",
                     ac: bool = False, ulysses: int = 1, ring: int = 1, parallelized: bool = False,
                     rank: int | None = None) -> ActivationBytes:
    """Bytes of activations saved for backward on one rank, for ``batch`` clips of ``layout``, with the
    sequence split over ``ulysses`` x ``ring`` context-parallel ranks: context-parallel rank ``rank``, or by
    default the most loaded one (all its tokens noisy, its audio injection over the most frames).
    ``parallelized``: the job runs through ``parallel.parallelize`` (any multi-rank job), whose
    checkpointing keeps the attention outputs."""
    if dtype not in _BLOCK_BYTES_PER_TOKEN:
        raise ValueError(f"dtype {dtype!r}: choose one of {sorted(_BLOCK_BYTES_PER_TOKEN)}")
    d, f = cfg.dim, cfg.ffn_dim
    cp = ulysses * ring
    s_loc = -(-layout.total // cp)
    # noisy tokens of this rank (of the most loaded: all of them)
    n_loc = min(s_loc, layout.noisy) if rank is None else max(0, min(s_loc, layout.noisy - rank * s_loc))
    frames = layout.grid[0]
    a_d, a_f, a_c, a_h = _BLOCK_BYTES_PER_TOKEN[dtype]
    if ulysses > 1:  # the attention keeps the all-to-all outputs (q, k, v, out by heads) and their LSE
        a_d += 4 * (2 if dtype == "bfloat16" else 4)
        a_h += 4
    if ring > 1:  # and the ring's merged float32 LSE beside the local one
        a_h += 4
    block = s_loc * (a_d * d + a_f * f + a_c + a_h * cfg.num_heads) + _BLOCK_TEXT_BYTES[dtype] * cfg.text_len * d
    i_n, i_f = _INJECTION_BYTES[dtype]
    inj_frames = injection_frames(layout, cp, rank)
    injection = i_n * inj_frames * layout.tokens_per_frame * d + i_f * inj_frames * d
    n_inj = len(cfg.audio_inject_layers)
    full = cfg.num_layers * block + n_inj * injection
    kept = 0.0
    if ac:
        layers, recompute = cfg.num_layers * s_loc * d * 4.0, block + (injection if n_inj else 0)
        if parallelized:
            elem = 2 if dtype == "bfloat16" else 4
            per_token = elem * d + 4 * cfg.num_heads + ((4 * elem * d + 4 * cfg.num_heads) if ulysses > 1 else 0)
            kept = cfg.num_layers * s_loc * per_token
    else:
        layers, recompute = full, 0.0
    latent_inputs = cfg.in_dim * (layout.noisy + layout.ref) * cfg.patch_numel
    if layout.motion_grids:  # FramePack's convolutions keep its whole (padded) motion buffer, not its tokens
        (_, gh, gw), (_, ph, pw) = layout.grid, cfg.patch_size
        latent_inputs += cfg.in_dim * cfg.motion_latent_frames * (gh * ph) * (gw * pw)
    if cfg.cond_dim:
        latent_inputs += cfg.cond_dim * layout.noisy * cfg.patch_numel
    audio_frames = 4 * frames * cfg.patch_size[0] + cfg.motion_frames
    outside = (4 * cfg.text_len * cfg.text_dim + 4 * latent_inputs + 4 * s_loc * d + 12 * n_loc * d
               + 9 * cfg.audio_layers * cfg.audio_dim * audio_frames)
    return ActivationBytes(batch * float(layers), batch * float(outside), batch * float(recompute),
                           batch * float(kept))


__all__ += ["ActivationBytes", "activation_bytes", "injection_frames"]


# ---- inference's encoders -----------------------------------------------------------------------------
_MATMUL_OPS = ("convolution", "mm", "addmm", "bmm", "baddbmm", "scaled_dot_product")


def count_dispatched_ops(fn, only: tuple[str, ...] | None = None) -> int:
    """Aten ops that running ``fn()`` dispatches (forward, and backward where ``fn`` runs one); with ``only``,
    those whose name (leading underscores dropped) starts with one of these."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if only is None or func.__name__.lstrip("_").startswith(only):
                Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def _count_meta(fn) -> tuple[float, int]:
    """(FLOPs, matmul/conv/attention calls) of ``fn()`` run on meta tensors (no compute, no memory)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        calls = count_dispatched_ops(fn, _MATMUL_OPS)
    return float(flops.get_total_flops()), calls


@functools.lru_cache(maxsize=16)
def vae_flops(height: int, width: int, encode_frames: int, decode_latent_frames: int) -> tuple[float, float, int]:
    """(encode FLOPs, decode FLOPs, conv calls) of the Wan 2.1 VAE encoding ``encode_frames`` pixel frames
    (1 + 4k; 0 for none) and decoding ``decode_latent_frames`` latent frames, at ``height`` x ``width`` pixels;
    counted on the meta device."""
    import torch

    from ..model.vae import WanVAE

    with torch.device("meta"):
        vae = WanVAE()
    enc, enc_calls = (0.0, 0) if encode_frames == 0 else _count_meta(
        lambda: vae.encode(torch.empty(1, 3, encode_frames, height, width, device="meta")))
    dec, dec_calls = _count_meta(lambda: vae.decode(torch.empty(1, vae.cfg.z_dim, decode_latent_frames, height // 8,
                                                                width // 8, device="meta")))
    return enc, dec, enc_calls + dec_calls


@functools.lru_cache(maxsize=16)
def audio_encoder_flops(seconds: float) -> tuple[float, int]:
    """(FLOPs, matmul/conv calls) of the official wav2vec2-large encoder on ``seconds`` of 16 kHz audio, counted
    on the meta device (``transformers`` is imported here)."""
    import torch
    from transformers import Wav2Vec2Model

    from ..model.audio_frontend import SAMPLE_RATE, wav2vec2_large_config

    with torch.device("meta"):
        model = Wav2Vec2Model(wav2vec2_large_config()).eval()  # no SpecAugment masking, no dropout
    samples = max(400, round(seconds * SAMPLE_RATE))  # wav2vec2's first conv needs 400 samples
    return _count_meta(lambda: model(torch.empty(1, samples, device="meta"), output_hidden_states=True))


__all__ += ["audio_encoder_flops", "count_dispatched_ops", "vae_flops"]


# ---- elementwise traffic --------------------------------------------------------------------------------
# Everything a step runs outside matmuls, convolutions and attention (norms, RoPE, modulation, gates,
# residuals, casts, concatenations and their backwards) moves memory rather than doing arithmetic. Its bytes are
# counted, not assumed: the model's real forward and backward run on fake tensors (shapes and dtypes, no data,
# no memory) at the real widths, under the real autocast, and every aten op that is not a view, an allocation
# or a matmul adds the bytes of its tensor inputs and outputs.
_NO_TRAFFIC = frozenset((
    "_unsafe_view", "_reshape_alias", "alias", "detach", "detach_", "lift", "lift_fresh", "_local_scalar_dense",
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "set_", "resize_",
    # in-place changes of metadata only
    "unsqueeze_", "squeeze_", "t_", "transpose_", "swapdims_", "swapaxes_", "as_strided_"))
_DESTINATION_ONLY = frozenset((  # their first argument is written, not read
    "fill_", "zero_", "copy_", "normal_", "uniform_", "bernoulli_", "random_", "exponential_", "geometric_",
    "cauchy_", "log_normal_"))
SHAPES_ONLY_ATTENTION = "shapes-only"
"""The attention backend :func:`elementwise_traffic` runs: the right output shape and gradients, no arithmetic
(a fused kernel's own reads and writes are the attention's time, not elementwise traffic; on fake tensors
torch's SDPA would otherwise decompose into its unfused math)."""
TRAFFIC_DTYPES = ("float32", "bfloat16")
"""What :func:`elementwise_traffic` counts: a float32 step, or the bf16 one the performance model's strategies
run (bf16 parameters, as FSDP's mixed precision hands them to the forward, under bf16 autocast)."""


def _touched_bytes(t) -> int:
    """Bytes a kernel touches of ``t``: its elements, or its storage when broadcasting repeats them."""
    try:
        return min(t.nbytes, t.untyped_storage().nbytes())
    except (RuntimeError, NotImplementedError):
        return t.nbytes


def _op_traffic(func, args, kwargs, out) -> int:
    """Bytes one aten op reads and writes, by its schema: arguments it does not write are read; an argument it
    writes in place is read and written (only written for ``_DESTINATION_ONLY`` ops and ``out=`` arguments);
    fresh returns are written. Views, allocations, metadata changes and matmuls move none."""
    import torch
    from torch.utils._pytree import tree_flatten

    name = func.__name__.split(".")[0]
    schema = func._schema
    views = schema.returns and all(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)
    if (func.namespace != "aten" or name in _NO_TRAFFIC or name.lstrip("_").startswith(_MATMUL_OPS)
            or views):
        return 0

    def tensors(value):
        return [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]

    bound = [*zip(schema.arguments, args), *((a, kwargs[a.name]) for a in schema.arguments if a.name in kwargs)]
    reads, writes = [], []
    for i, (arg, value) in enumerate(bound):
        written = arg.alias_info is not None and arg.alias_info.is_write
        if not written or (i == 0 and name not in _DESTINATION_ONLY and not arg.kwarg_only):
            reads += tensors(value)
        if written:
            writes += tensors(value)
    results = out if len(schema.returns) > 1 else (out,)
    for ret, value in zip(schema.returns, results):
        if ret.alias_info is None:
            writes += tensors(value)
    return sum(map(_touched_bytes, reads)) + sum(map(_touched_bytes, writes))


def _custom_op_body(func):
    """The Python function behind a ``torch.library.custom_op`` (context parallelism's attention is one), or
    None for any other op."""
    if func.namespace in ("aten", "prim", "prims"):
        return None
    try:
        from torch._library.custom_ops import _maybe_get_opdef
    except ImportError:  # an older torch: such ops count as moving nothing
        return None
    opdef = _maybe_get_opdef(func)
    return None if opdef is None else opdef._init_fn


def count_traffic(fn, on_op=None) -> float:
    """Bytes that the elementwise ops ``fn()`` dispatches read and write (forward, and backward where ``fn`` runs
    one; :func:`_op_traffic` per op, custom ops by the ops their bodies run); ``on_op(nbytes)`` also sees each
    op's bytes as it runs (to split them by stage)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    total = 0.0

    class Traffic(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            nonlocal total
            kwargs = kwargs or {}
            body = _custom_op_body(func)
            if body is not None:  # opaque to this mode otherwise: count what its Python body runs
                with self:
                    return body(*args, **kwargs)
            out = func(*args, **kwargs)
            nbytes = _op_traffic(func, args, kwargs, out)
            if nbytes:
                total += nbytes
                if on_op is not None:
                    on_op(nbytes)
            return out

    with Traffic():
        fn()
    return total


@functools.lru_cache(maxsize=1)
def _register_shapes_only_attention() -> None:
    import torch
    from torch._subclasses.fake_tensor import FakeTensor

    from ..model.attention import register_attention_backend

    class ShapesOnly(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            ctx.shapes = (q, k, v)
            return q.new_empty(*q.shape[:-1], v.shape[-1])

        @staticmethod
        def backward(ctx, grad):
            return tuple(torch.empty_like(t) for t in ctx.shapes)

    def attention(q, k, v, kv_lens):
        if not isinstance(q, FakeTensor):
            raise ValueError(f"the {SHAPES_ONLY_ATTENTION!r} attention backend computes nothing; it counts traffic "
                             f"on fake tensors (got real {q.device.type} tensors); use 'torch' or 'triton'")
        return ShapesOnly.apply(q, k, v)

    register_attention_backend(SHAPES_ONLY_ATTENTION, attention, overwrite=True)


@dataclass(frozen=True)
class ElementwiseTraffic:
    """Bytes the elementwise ops of one clip's training step read and write, by stage of
    ``WanS2V.forward_tokens`` (batch 1; the optimizer's traffic is not in it). In bf16 the norms, modulation
    and residual stream stay float32 (the fp32 islands), matmul outputs halve and the casts add traffic."""

    prepare_forward: float
    """Embeddings, FramePack, the audio encoder, text and time: the whole clip, on every context-parallel rank."""
    prepare_backward: float
    """Their backward."""
    block_forward: float
    """One block without an audio injection, over the whole sequence (context parallelism divides it)."""
    block_backward: float
    """Its backward."""
    injection_forward: float
    """One audio injection, and what it adds to its block."""
    injection_backward: float
    """Its backward."""
    head_forward: float
    """The head and the loss on the noisy tokens (divided by context parallelism too)."""
    head_backward: float
    """Their backward."""

    def layers_forward(self, cfg: WanS2VConfig, block_share: float = 1.0, injection_share: float = 1.0) -> float:
        """``cfg``'s blocks and injections, forward, on a rank holding these shares of their tokens."""
        return (cfg.num_layers * block_share * self.block_forward
                + len(cfg.audio_inject_layers) * injection_share * self.injection_forward)

    def layers_backward(self, cfg: WanS2VConfig, block_share: float = 1.0, injection_share: float = 1.0) -> float:
        """Their backward."""
        return (cfg.num_layers * block_share * self.block_backward
                + len(cfg.audio_inject_layers) * injection_share * self.injection_backward)


@contextlib.contextmanager
def fake_training_inputs(cfg: WanS2VConfig, layout: SequenceLayout, dtype: str = "float32"):
    """Yields (model, batch): one clip of ``layout`` through ``cfg`` as fake CPU tensors (shapes and dtypes, no
    data, no memory), the model's attention the shapes-only backend, in ``dtype`` (``TRAFFIC_DTYPES``); run the
    step inside the ``with`` (under ``flow.compute_autocast``)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ..model import ClipShape, WanS2V
    from ..model.flow import synthetic_batch

    if dtype not in TRAFFIC_DTYPES:
        raise ValueError(f"dtype {dtype!r}: elementwise traffic is counted for {' or '.join(TRAFFIC_DTYPES)}")
    _register_shapes_only_attention()
    (ft, fh, fw), (pt, ph, pw) = layout.grid, cfg.patch_size
    clip = ClipShape(ft * pt, fh * ph, fw * pw, text_tokens=cfg.text_len, with_motion=bool(layout.motion_grids))
    with FakeTensorMode():
        model = WanS2V(cfg)
        for m in model.modules():
            if hasattr(m, "attn_backend"):
                m.attn_backend = SHAPES_ONLY_ATTENTION
        if dtype == "bfloat16":  # FSDP casts the parameters, not the buffers
            for p in model.parameters():
                p.data = p.data.to(torch.bfloat16)
        # a one-element index made here stays a known constant: the noise draw reads it as an int
        batch = dataclasses.replace(synthetic_batch(cfg, clip, 1), sample_index=torch.tensor([0]))
        yield model, batch


def _stage_traffic(cfg: WanS2VConfig, layout: SequenceLayout, dtype: str = "float32") -> dict[str, float]:
    """Bytes per stage and direction of one ``dtype`` training step of ``cfg`` on ``layout``, on fake tensors.
    Forward ops belong to the stage that runs them; a backward op to the stage whose forward created the
    autograd node running it (told apart by the nodes' sequence numbers), however the engine interleaves them."""
    import torch

    from ..model.flow import compute_autocast, flow_matching_loss

    bytes_ = dict.fromkeys(("prepare forward", "blocks forward", "head forward", "head backward",
                            "blocks backward", "prepare backward"), 0.0)
    stage = ["prepare forward"]
    bounds = []  # the autograd sequence number when the blocks start, and when they end

    def sequence_number() -> int:
        # the next node's number, read off a view of a fresh leaf (a view moves no bytes)
        return torch.empty(0, requires_grad=True).view(0).grad_fn._sequence_nr()

    def staged_run_blocks(*args, **kwargs):
        stage[0] = "blocks forward"
        bounds.append(sequence_number())
        out = run_blocks(*args, **kwargs)
        bounds.append(sequence_number())
        stage[0] = "head forward"
        return out

    last = ["head backward"]  # gradient accumulation into the leaves goes with the node that fed it

    def on_op(n):
        node = torch._C._current_autograd_node()
        if node is not None:
            seq = node._sequence_nr()
            if seq < 2 ** 63:  # AccumulateGrad nodes carry no forward order
                last[0] = ("prepare backward" if seq < bounds[0] else
                           "blocks backward" if seq < bounds[1] else "head backward")
            bytes_[last[0]] += n
        else:
            bytes_[stage[0]] += n

    with fake_training_inputs(cfg, layout, dtype) as (model, batch):
        run_blocks = model.run_blocks
        model.run_blocks = staged_run_blocks

        def step():
            with torch.enable_grad():  # a caller's no_grad would leave no backward to count
                with compute_autocast("cpu", dtype):
                    loss = flow_matching_loss(model, batch, seed=0, step=0)
                stage[0] = "head backward"  # what backward() runs before its first node
                loss.loss_sum.backward()

        count_traffic(step, on_op)
    return bytes_


@functools.lru_cache(maxsize=64)
def elementwise_traffic(cfg: WanS2VConfig, layout: SequenceLayout, dtype: str = "float32") -> ElementwiseTraffic:
    """The elementwise bytes of one clip of ``layout`` through ``cfg`` in ``dtype`` (``TRAFFIC_DTYPES``), counted
    (:func:`count_traffic`) on two one-block models of ``cfg``'s widths, with and without an audio injection,
    so that a 40-block 14b costs no more to count than one block (seconds; cached per config, layout, dtype)."""
    plain = _stage_traffic(dataclasses.replace(cfg, num_layers=1, audio_inject_layers=()), layout, dtype)
    injected = _stage_traffic(dataclasses.replace(cfg, num_layers=1, audio_inject_layers=(0,)), layout, dtype)
    # without injections nothing takes the audio encoder's gradient: its backward does not run
    prepared = injected if cfg.audio_inject_layers else plain
    return ElementwiseTraffic(
        prepare_forward=prepared["prepare forward"], prepare_backward=prepared["prepare backward"],
        block_forward=plain["blocks forward"], block_backward=plain["blocks backward"],
        injection_forward=injected["blocks forward"] - plain["blocks forward"],
        injection_backward=injected["blocks backward"] - plain["blocks backward"],
        head_forward=injected["head forward"], head_backward=injected["head backward"])


__all__ += ["ElementwiseTraffic", "SHAPES_ONLY_ATTENTION", "TRAFFIC_DTYPES", "count_traffic", "elementwise_traffic",
            "fake_training_inputs"]
