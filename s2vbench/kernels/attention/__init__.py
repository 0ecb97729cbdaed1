"""Fused bidirectional attention returning the log-sum-exp, in Triton, with a plain-torch reference.

The references import only torch. The Triton names (``attention_forward`` ...) load ``ops`` on first use, so
importing the references never imports triton; set TRITON_INTERPRET=1 before that first use to run on CPU."""

from .reference import attention_backward_reference, attention_reference, merge_attention

_OPS = ("VARIANTS", "attention_backward", "attention_forward", "flash_attention", "flash_attention_with_lse",
        "interpreting")


def __getattr__(name: str):
    if name in _OPS:
        from . import ops

        return getattr(ops, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["attention_backward_reference", "attention_reference", "merge_attention", *_OPS]
