"""Fused bidirectional attention returning the log-sum-exp, in Triton, with a plain-torch reference.

Import of this package needs triton; set TRITON_INTERPRET=1 before importing it to run on CPU (float32)."""

from .ops import (VARIANTS, attention_backward, attention_forward, flash_attention, flash_attention_with_lse,
                  interpreting)
from .reference import attention_backward_reference, attention_reference, merge_attention

__all__ = ["VARIANTS", "attention_backward", "attention_backward_reference", "attention_forward", "attention_reference",
           "flash_attention", "flash_attention_with_lse", "interpreting", "merge_attention"]
