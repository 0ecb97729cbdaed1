"""The audio encoder's causal Conv1d fused with LayerNorm and SiLU.

``reference`` is plain torch (and the model's default path); ``triton_op`` holds the Triton kernels (import
it explicitly, after setting TRITON_INTERPRET=1 when running on CPU)."""

from .reference import causal_conv_ln_silu_reference

__all__ = ["causal_conv_ln_silu_reference"]
