"""The model's one attention seam.

Every attention in the model (self, text cross, audio cross) calls :func:`attention`. A backend is chosen by
name per module, so the parallel code can swap the self-attention of each block for a sequence-parallel
backend while cross-attention stays local, and the Triton kernel plugs in the same way.

Layout is ``[B, N, H, D]`` for q, k and v (the layout the projections produce). ``kv_lens`` optionally gives
each batch item's number of valid keys; keys at or past it are masked (padding).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]

_BACKENDS: dict[str, AttentionFn] = {}
_LAZY_BACKENDS: dict[str, Callable[[], AttentionFn]] = {}


def register_attention_backend(name: str, fn: AttentionFn | None = None, *, loader: Callable[[], AttentionFn] | None = None,
                               overwrite: bool = False) -> None:
    """Register ``fn(q, k, v, kv_lens) -> out`` under ``name``, or a ``loader`` that imports it on first use."""
    if (fn is None) == (loader is None):
        raise ValueError("register_attention_backend needs exactly one of fn or loader")
    if not overwrite and (name in _BACKENDS or name in _LAZY_BACKENDS):
        raise ValueError(f"attention backend {name!r} is already registered; pass overwrite=True to replace it")
    _BACKENDS.pop(name, None)
    _LAZY_BACKENDS.pop(name, None)
    if fn is not None:
        _BACKENDS[name] = fn
    else:
        _LAZY_BACKENDS[name] = loader


def attention_backends() -> tuple[str, ...]:
    return tuple(sorted({*_BACKENDS, *_LAZY_BACKENDS}))


def get_attention_backend(name: str) -> AttentionFn:
    fn = _BACKENDS.get(name)
    if fn is None:
        loader = _LAZY_BACKENDS.get(name)
        if loader is None:
            raise ValueError(f"unknown attention backend {name!r}; registered backends: {list(attention_backends())}")
        fn = _BACKENDS[name] = loader()
        del _LAZY_BACKENDS[name]
    return fn


def check_attention_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lens: torch.Tensor | None) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects [B, N, H, D] tensors, got q{tuple(q.shape)} k{tuple(k.shape)} "
                         f"v{tuple(v.shape)}")
    if k.shape != v.shape:
        raise ValueError(f"attention: k{tuple(k.shape)} and v{tuple(v.shape)} must have the same shape")
    b, _, h, d = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (b, h, d):
        raise ValueError(f"attention: q{tuple(q.shape)} and k{tuple(k.shape)} disagree on batch, heads or head_dim")
    if kv_lens is not None and tuple(kv_lens.shape) != (b,):
        raise ValueError(f"attention: kv_lens must have shape ({b},), got {tuple(kv_lens.shape)}")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lens: torch.Tensor | None = None,
              backend: str = "torch") -> torch.Tensor:
    """Bidirectional softmax attention, scale 1/sqrt(D); q [B, Nq, H, D], k/v [B, Nk, H, D] -> [B, Nq, H, D]."""
    check_attention_inputs(q, k, v, kv_lens)
    return get_attention_backend(backend)(q, k, v, kv_lens)


def key_padding_mask(kv_lens: torch.Tensor, num_keys: int) -> torch.Tensor:
    """[B, 1, 1, Nk] bool, True where a key is valid."""
    return (torch.arange(num_keys, device=kv_lens.device)[None, :] < kv_lens[:, None])[:, None, None, :]


def _torch_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv_lens: torch.Tensor | None) -> torch.Tensor:
    mask = None if kv_lens is None else key_padding_mask(kv_lens.to(q.device), k.shape[1])
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2)


def _load_triton() -> AttentionFn:
    from ..kernels.attention import flash_attention

    return flash_attention


def _load_flash_attn() -> AttentionFn:
    try:
        from flash_attn import flash_attn_func
    except Exception as e:  # noqa: BLE001 - any import failure means the package is unusable here
        raise ImportError(f"the 'flash_attn' attention backend needs flash-attn on a CUDA machine (install the 'gpu' "
                          f"extra); importing it failed: {type(e).__name__}: {e}") from None

    def flash(q, k, v, kv_lens):
        if kv_lens is not None:
            raise ValueError("the 'flash_attn' backend takes no key-length mask here; use 'triton' or 'torch'")
        return flash_attn_func(q, k, v)  # [B, N, H, D] is flash-attn's own layout

    return flash


register_attention_backend("torch", _torch_sdpa)
register_attention_backend("triton", loader=_load_triton)
register_attention_backend("flash_attn", loader=_load_flash_attn)

__all__ = ["AttentionFn", "attention", "attention_backends", "check_attention_inputs", "get_attention_backend",
           "key_padding_mask", "register_attention_backend"]
