"""Compile options every kernel launch states instead of leaving to Triton's defaults."""

COMPILE_OPTIONS = {"enable_fp_fusion": True}
"""``enable_fp_fusion``: multiply-adds fuse into FMA. It is Triton's default up to 3.9, which 3.10 turns off;
the kernels' float32 error against float64 and the committed compile report (PTX, shared memory, registers)
are with it on, so a Triton upgrade must not change it silently. Stating it also stops Triton 3.9's warning at
each first compile."""
