"""The interpreter probe: a Triton whose interpreter cannot loop to a runtime bound under this numpy (Triton
3.6 with numpy 2.4) is named, with the fix, before any kernel launches."""

import pytest
import torch

from conftest import ON_GPU

pytestmark = pytest.mark.skipif(ON_GPU, reason="the probe runs only under the CPU interpreter")
interp = pytest.importorskip("s2vbench.kernels.interpreter")


class _Launch:
    """Stands in for a jitted kernel: ``kernel[grid](...)`` raises ``error``."""

    def __init__(self, error: Exception):
        self.error = error

    def __getitem__(self, grid):
        def launch(*args):
            raise self.error
        return launch


@pytest.fixture
def probe(monkeypatch):
    def use(error: Exception | None):
        if error is not None:
            monkeypatch.setattr(interp, "_runtime_loop_probe", _Launch(error))
        interp.check_interpreter.cache_clear()
    yield use
    interp.check_interpreter.cache_clear()


def test_this_interpreter_runs_a_loop_to_a_runtime_bound(probe):
    probe(None)
    interp.check_interpreter()  # the real probe kernel, on this machine's Triton and numpy


@pytest.mark.parametrize("kernel", ["attention", "causal_conv"])
def test_the_numpy_2_4_break_is_named_with_its_fix(probe, kernel):
    # what Triton 3.6's interpreter raises under numpy 2.4 (triton-lang/triton#9171)
    probe(RuntimeError("InterpreterError: TypeError('only 0-dimensional arrays can be converted to Python "
                       "scalars')"))
    with pytest.raises(RuntimeError, match=r"cannot run with numpy .*Install numpy<2.4"):
        if kernel == "attention":
            from s2vbench.kernels.attention import attention_forward

            q = torch.randn(1, 16, 1, 16)
            attention_forward(q, q, q)
        else:
            from s2vbench.kernels.causal_conv.triton_op import causal_conv_ln_silu

            causal_conv_ln_silu(torch.randn(1, 4, 8), torch.randn(8, 4, 3), None, stride=1)


def test_other_interpreter_failures_are_not_renamed(probe):
    probe(ValueError("something else"))
    with pytest.raises(ValueError, match="something else"):
        interp.check_interpreter()
