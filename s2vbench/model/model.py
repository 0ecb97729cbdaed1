"""Wan-S2V: the audio-driven video DiT, key-compatible with the released checkpoint.

Data flow of one forward (see ``shared/spec/wan_s2v.md`` section 3):

1. audio features [B, 25, audio_dim, I] get 73 copies of their first frame prepended, pass the causal audio
   encoder, and lose the 19 latent frames that stand for that prefix -> per-frame local/global tokens;
2. ``[noisy | ref | motion]`` tokens: patch-embedded noisy latent (+ pose through ``cond_encoder``), the
   patch-embedded reference image, and FramePack motion tokens, plus the ``trainable_cond_mask`` type embedding;
3. the timestep (and a zero timestep for ref/motion) becomes six modulation vectors per block;
4. the blocks run over the whole sequence; after the blocks in ``audio_inject_layers`` the noisy tokens get
   the per-frame audio cross-attention residual;
5. the head turns the noisy tokens back into a velocity latent.

:meth:`WanS2V.prepare`, :meth:`WanS2V.run_blocks` and :meth:`WanS2V.head_tokens` are the stages the parallel
code reuses on a window of the sequence; :meth:`WanS2V.forward` is all three on the whole sequence.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .audio import AudioInjector, CausalAudioEncoder
from .config import WanS2VConfig
from .framepack import FramePackMotioner
from .layers import Head, WanS2VBlock, at_least_fp32, fp32_island, linear_as_input
from .rope import rope_cos_sin
from .sequence import InputError, SequenceLayout, audio_latent_frames, rope_positions, sequence_layout


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """[B] timesteps -> [B, dim] float64 (cos half, then sin half), frequencies 10000^(-i/half)."""
    half = dim // 2
    pos = t.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=pos.device) / half)
    args = torch.outer(pos, freqs)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


@dataclass
class PreparedSequence:
    """Everything the blocks and the head need, computed once per forward."""

    tokens: torch.Tensor
    """[B, S, C] input tokens ``[noisy | ref | motion]`` in >= float32."""
    e0: torch.Tensor
    """[B, 6, 2, C] block modulation inputs; variant 0 for noisy tokens, 1 for ref/motion."""
    e_head: torch.Tensor
    """[B, C] time embedding of t, for the head."""
    context: torch.Tensor
    """[B, text_len, C] embedded, zero-padded text."""
    cos: torch.Tensor
    """[S, head_dim/2] float32 RoPE cosines."""
    sin: torch.Tensor
    """[S, head_dim/2] float32 RoPE sines."""
    audio_local: torch.Tensor
    """[B, F, num_audio_token + 1, C] per-latent-frame audio tokens."""
    audio_global: torch.Tensor | None
    """[B, F, 1, C] per-latent-frame global audio token (AdaLN condition), or None without AdaLN."""
    layout: SequenceLayout
    """Token counts of the sequence."""


@dataclass
class SequenceWindow:
    """The contiguous part of the sequence a forward runs the blocks on (all of it, unless sharded)."""

    tokens: torch.Tensor
    """[B, L, C] the window's tokens."""
    cos: torch.Tensor
    """[L, head_dim/2] its RoPE rows."""
    sin: torch.Tensor
    """[L, head_dim/2]."""
    first_token: int
    """Global index of its first token."""
    num_noisy: int
    """Noisy-video tokens at its start."""


def whole_sequence(prep: PreparedSequence) -> SequenceWindow:
    return SequenceWindow(prep.tokens, prep.cos, prep.sin, 0, prep.layout.noisy)


class WanS2V(nn.Module):
    """The Wan-S2V diffusion transformer. Build the 14b preset under ``torch.device("meta")`` and
    materialise it later with ``to_empty`` + :meth:`init_weights` or a checkpoint load."""

    def __init__(self, cfg: WanS2VConfig):
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.blocks = nn.ModuleList(
            WanS2VBlock(dim, cfg.ffn_dim, cfg.num_heads, cfg.eps, cfg.qk_norm, cfg.cross_attn_norm)
            for _ in range(cfg.num_layers))
        self.head = Head(dim, cfg.out_dim, cfg.patch_size, cfg.eps)
        self.cond_encoder = (nn.Conv3d(cfg.cond_dim, dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
                             if cfg.cond_dim > 0 else None)
        self.casual_audio_encoder = CausalAudioEncoder(cfg.audio_dim, dim, cfg.audio_layers, cfg.num_audio_token,
                                                       need_global=cfg.enable_adain)
        self.audio_injector = AudioInjector(dim, cfg.num_heads, len(cfg.audio_inject_layers), cfg.eps,
                                            cfg.enable_adain)
        self.trainable_cond_mask = nn.Embedding(3, dim)
        self.frame_packer = FramePackMotioner(cfg.in_dim, dim, cfg.framepack_buckets)
        self.injection_of_block = {block: k for k, block in enumerate(cfg.audio_inject_layers)}
        self.activation_checkpointing = False
        """Recompute each block (and its audio injection) in the backward pass to save activation memory."""
        self.checkpoint_context_fn = None
        """Optional ``context_fn`` for torch.utils.checkpoint (selective checkpointing policies)."""
        self.sequence_window = whole_sequence
        """Chooses the window of the prepared sequence the blocks run on (context parallelism swaps it)."""
        self._taps: dict[str, torch.Tensor] | None = None
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    # ---- initialisation -----------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self) -> None:
        """The official initialisation: xavier for the DiT's linears, N(0, 0.02) for the text and time
        embeddings, a zero head, torch defaults for the S2V additions, and zeros for the modules that must
        not change the output at initialisation (pose encoder, type embedding, audio output layers)."""
        for m in self.modules():
            if m is not self and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        dit = [self.text_embedding, self.time_embedding, self.time_projection, self.blocks, self.head]
        for part in dit:
            for m in part.modules():
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.view(self.cfg.dim, -1))
        for m in (*self.text_embedding, *self.time_embedding):
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
        zeroed: list[nn.Module] = [self.trainable_cond_mask, *[inj.o for inj in self.audio_injector.injector]]
        if self.cond_encoder is not None:
            zeroed.append(self.cond_encoder)
        if self.audio_injector.injector_adain_layers is not None:
            zeroed += [ada.linear for ada in self.audio_injector.injector_adain_layers]
        for m in zeroed:
            for p in m.parameters():
                p.zero_()

    # ---- intermediate taps (debugging and fixture parity) ------------------------------------------
    @contextlib.contextmanager
    def capture_intermediates(self):
        """Within the block, forwards record named intermediates (detached) into the yielded dict."""
        self._taps = {}
        try:
            yield self._taps
        finally:
            self._taps = None

    def _tap(self, name: str, value: torch.Tensor) -> None:
        if self._taps is not None:
            self._taps[name] = value.detach().clone()

    # ---- shapes -------------------------------------------------------------------------------------
    def layout_for(self, x: torch.Tensor, with_motion: bool) -> SequenceLayout:
        return sequence_layout(self.cfg, *x.shape[2:], with_motion=with_motion)

    def patchify(self, latent: torch.Tensor) -> torch.Tensor:
        """[B, C, F, h, w] -> [B, F'*H*W, pt*ph*pw*C] in the order the head predicts."""
        b, c, f, h, w = latent.shape
        pt, ph, pw = self.cfg.patch_size
        x = latent.reshape(b, c, f // pt, pt, h // ph, ph, w // pw, pw)
        return x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, (f // pt) * (h // ph) * (w // pw), -1)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, F*H*W, pt*ph*pw*C] -> [B, C, F*pt, H*ph, W*pw]."""
        b = tokens.shape[0]
        f, h, w = grid
        pt, ph, pw = self.cfg.patch_size
        x = tokens.reshape(b, f, h, w, pt, ph, pw, self.cfg.out_dim)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, self.cfg.out_dim, f * pt, h * ph, w * pw)

    def _check_inputs(self, x, t, context, ref_latents, audio_input, motion_latents, cond_states) -> SequenceLayout:
        cfg = self.cfg

        def need(name: str, tensor: torch.Tensor, shape: tuple, what: str) -> None:
            if tensor.ndim != len(shape) or any(want is not None and have != want
                                                for have, want in zip(tensor.shape, shape)):
                pretty = tuple("*" if s is None else s for s in shape)
                raise InputError(f"{name} must be {what} of shape {pretty}, got {tuple(tensor.shape)}")

        need("x", x, (None, cfg.in_dim, None, None, None), "the noisy latent [B, in_dim, F, h, w]")
        b, _, f, h, w = x.shape
        layout = self.layout_for(x, with_motion=motion_latents is not None)
        need("t", t, (b,), "one timestep per batch item")
        need("context", context, (b, None, cfg.text_dim), "the text embedding [B, L, text_dim]")
        if context.shape[1] > cfg.text_len:
            raise InputError(f"context has {context.shape[1]} text tokens but the model takes at most "
                             f"text_len={cfg.text_len}; truncate the prompt embedding")
        need("ref_latents", ref_latents, (b, cfg.in_dim, 1, h, w), "the reference-image latent")
        if motion_latents is not None:
            need("motion_latents", motion_latents, (b, cfg.in_dim, None, h, w), "the motion latents")
        if cond_states is not None:
            if cfg.cond_dim == 0:
                raise InputError("cond_states given but this config has cond_dim=0 (no pose encoder)")
            need("cond_states", cond_states, (b, cfg.cond_dim, f, h, w), "the pose latent")
        need("audio_input", audio_input, (b, cfg.audio_layers, cfg.audio_dim, None),
             "wav2vec2 features [B, layers, audio_dim, video_frames]")
        got = audio_latent_frames(audio_input.shape[-1], cfg.motion_frames)
        if got != layout.grid[0] * cfg.patch_size[0]:
            verdict = "too short" if got < f else "too long"
            raise InputError(
                f"audio_input covers {audio_input.shape[-1]} video frames, which is {got} latent frames, but the "
                f"noisy latent has {f}: the audio is {verdict} for the clip; pass {4 * f} frames (16 fps)")
        return layout

    # ---- stage 1: inputs -> token sequence ----------------------------------------------------------
    def prepare(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, ref_latents: torch.Tensor,
                audio_input: torch.Tensor, motion_latents: torch.Tensor | None = None,
                cond_states: torch.Tensor | None = None) -> PreparedSequence:
        """Embed all inputs. ``motion_latents=None`` is the first clip (no motion tokens); ``cond_states=None``
        is no pose (the official pipeline's zero pose latent, i.e. the pose encoder's bias)."""
        cfg = self.cfg
        layout = self._check_inputs(x, t, context, ref_latents, audio_input, motion_latents, cond_states)
        dev = x.device

        audio = torch.cat([audio_input[..., :1].expand(*audio_input.shape[:-1], cfg.motion_frames), audio_input],
                          dim=-1)
        audio_local, audio_global = self.casual_audio_encoder(audio)
        drop = cfg.motion_latent_frames
        audio_local = audio_local[:, drop:]
        audio_global = None if audio_global is None else audio_global[:, drop:]
        self._tap("audio_emb_local", audio_local)
        if audio_global is not None:
            self._tap("audio_emb_global", audio_global)

        noisy = self.patch_embedding(x)
        if self.cond_encoder is not None:
            if cond_states is not None:
                noisy = noisy + self.cond_encoder(cond_states)
            else:
                noisy = noisy + self.cond_encoder.bias.to(noisy.dtype)[None, :, None, None, None]
        parts = [noisy.flatten(2).transpose(1, 2), self.patch_embedding(ref_latents).flatten(2).transpose(1, 2)]
        if motion_latents is not None:
            parts.append(self.frame_packer(motion_latents))
        types = layout.token_types().to(dev)
        self._tap("mask_input", types[None])
        tokens = at_least_fp32(torch.cat(parts, dim=1))
        tokens = tokens + self.trainable_cond_mask(types).to(tokens.dtype)

        cos, sin = rope_cos_sin(rope_positions(cfg, layout).to(dev), cfg.head_dim, cfg.rope_theta)
        self._tap("rope_cos", cos)
        self._tap("rope_sin", sin)

        b = x.shape[0]
        times = torch.cat([t, t.new_zeros(1)]) if cfg.zero_timestep else t
        with fp32_island(dev.type):
            dtype = torch.promote_types(self.time_embedding[0].weight.dtype, torch.float32)
            h = sinusoidal_embedding(cfg.freq_dim, times).to(dtype)
            e = linear_as_input(self.time_embedding[2], torch.nn.functional.silu(
                linear_as_input(self.time_embedding[0], h)))
            e0 = linear_as_input(self.time_projection[1], torch.nn.functional.silu(e))
        self._tap("time_projection_out", e0)
        e0 = e0.unflatten(1, (6, cfg.dim))
        if cfg.zero_timestep:
            e0 = torch.stack([e0[:b], e0[b:].expand(b, -1, -1)], dim=2)
        else:
            e0 = e0.unsqueeze(2).expand(-1, -1, 2, -1)

        ctx = torch.nn.functional.pad(context, (0, 0, 0, cfg.text_len - context.shape[1]))
        ctx = self.text_embedding(ctx)
        self._tap("text_embedding_out", ctx)
        return PreparedSequence(tokens, e0, e[:b], ctx, cos, sin, audio_local, audio_global, layout)

    # ---- stage 2: blocks ----------------------------------------------------------------------------
    def block_and_injection(self, i: int, x: torch.Tensor, prep: PreparedSequence, num_noisy: int,
                            first_token: int = 0, cos: torch.Tensor | None = None, sin: torch.Tensor | None = None,
                            kv_lens: torch.Tensor | None = None) -> torch.Tensor:
        """Block i on a window of the sequence, then its audio injection if it has one.

        The window ``x`` starts at global token ``first_token``; its first ``num_noisy`` tokens are noisy video.
        ``cos``/``sin`` are the window's RoPE rows (default: the whole sequence's)."""
        cos = prep.cos if cos is None else cos
        sin = prep.sin if sin is None else sin
        x = self.blocks[i](x, prep.e0, num_noisy, cos, sin, prep.context, kv_lens)
        self._tap(f"block_out.{i}", x)
        k = self.injection_of_block.get(i)
        if k is not None:
            delta = self.audio_injector.inject(k, x[:, :num_noisy], prep.audio_local, prep.audio_global,
                                               prep.layout.tokens_per_frame, first_token)
            x = torch.cat([x[:, :num_noisy] + delta, x[:, num_noisy:]], dim=1)
            self._tap(f"after_inject.{i}", x)
        return x

    def run_blocks(self, x: torch.Tensor, prep: PreparedSequence, num_noisy: int, first_token: int = 0,
                   cos: torch.Tensor | None = None, sin: torch.Tensor | None = None,
                   kv_lens: torch.Tensor | None = None) -> torch.Tensor:
        for i in range(len(self.blocks)):
            if self.activation_checkpointing and torch.is_grad_enabled():
                extra = {} if self.checkpoint_context_fn is None else {"context_fn": self.checkpoint_context_fn}
                x = checkpoint(self.block_and_injection, i, x, prep, num_noisy, first_token, cos, sin, kv_lens,
                               use_reentrant=False, **extra)
            else:
                x = self.block_and_injection(i, x, prep, num_noisy, first_token, cos, sin, kv_lens)
        return x

    # ---- stage 3: head ------------------------------------------------------------------------------
    def head_tokens(self, x_noisy: torch.Tensor, prep: PreparedSequence) -> torch.Tensor:
        """Noisy-token hidden states [B, n, C] -> velocity patches [B, n, pt*ph*pw*out_dim] (>= float32)."""
        return self.head(x_noisy, prep.e_head)

    # ---- whole forward --------------------------------------------------------------------------------
    def forward_tokens(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, ref_latents: torch.Tensor,
                       audio_input: torch.Tensor, motion_latents: torch.Tensor | None = None,
                       cond_states: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, PreparedSequence, SequenceWindow]:
        """Velocity patch tokens [B, window.num_noisy, pt*ph*pw*out_dim] of the noisy tokens starting at
        ``window.first_token`` (the whole clip unless ``sequence_window`` shards it), with the prepared
        sequence and the window."""
        prep = self.prepare(x, t, context, ref_latents, audio_input, motion_latents, cond_states)
        win = self.sequence_window(prep)
        # The blocks see the window's tokens only: activation checkpointing keeps its inputs, this ``prep``
        # among them, until backward, and a sharded window must not keep the whole sequence alive with it.
        blocks_prep = prep if win.tokens is prep.tokens else replace(prep, tokens=win.tokens)
        hidden = self.run_blocks(win.tokens, blocks_prep, win.num_noisy, win.first_token, win.cos, win.sin)
        return self.head_tokens(hidden[:, :win.num_noisy], prep), prep, win

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, ref_latents: torch.Tensor,
                audio_input: torch.Tensor, motion_latents: torch.Tensor | None = None,
                cond_states: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted flow velocity [B, out_dim, F, h, w] (float32, or float64 for a float64 model).

        x [B, in_dim, F, h, w] noisy latent; t [B] timesteps in [0, 1000]; context [B, L <= text_len, text_dim];
        ref_latents [B, in_dim, 1, h, w]; audio_input [B, 25, audio_dim, 4F] wav2vec2 features at 16 fps;
        motion_latents [B, in_dim, <= 19, h, w] or None for the first clip; cond_states [B, cond_dim, F, h, w]
        pose latent or None for no pose."""
        tokens, prep, win = self.forward_tokens(x, t, context, ref_latents, audio_input, motion_latents, cond_states)
        if win.num_noisy != prep.layout.noisy:
            raise RuntimeError("forward() returns the whole clip; with a sharded sequence_window use forward_tokens()")
        return self.unpatchify(tokens, prep.layout.grid)


__all__ = ["PreparedSequence", "SequenceWindow", "WanS2V", "sinusoidal_embedding", "whole_sequence"]
