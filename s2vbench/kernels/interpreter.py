"""Running the kernels on CPU through Triton's interpreter (``TRITON_INTERPRET=1``), and the one known way it
breaks: Triton's interpreter up to 3.6 turns a loop bound held in a one-element array into a Python int with
``int()``, which numpy 2.4 refuses (triton-lang/triton#9171, fixed in later releases). Every kernel here loops
to a runtime bound, so under that pairing each launch would fail deep inside Triton; a tiny probe finds it
first and names the fix."""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _runtime_loop_probe(X, n):
    acc = 0.0
    for i in range(0, n):
        acc += tl.load(X + i)
    tl.store(X, acc)


@functools.cache
def check_interpreter() -> None:
    """Raise a clear error when this Triton's interpreter cannot run a loop to a runtime bound (once a
    process; a no-op on GPU)."""
    if not interpreting():
        return
    try:
        _runtime_loop_probe[(1,)](torch.ones(2), 2)
    except Exception as e:  # noqa: BLE001 - the interpreter wraps what it hit in its own error type
        if "0-dimensional arrays" not in str(e):
            raise
        import numpy

        raise RuntimeError(
            f"Triton {triton.__version__}'s interpreter (TRITON_INTERPRET=1) cannot run with numpy "
            f"{numpy.__version__}: it converts loop bounds with int(), which numpy 2.4 rejects "
            f"(triton-lang/triton#9171). Install numpy<2.4 (pip install 'numpy<2.4') or a Triton release with "
            f"the fix, or run the kernels on a GPU") from e


__all__ = ["check_interpreter", "interpreting"]
