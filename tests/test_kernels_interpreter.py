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


def test_every_kernel_launch_states_the_compile_options(monkeypatch):
    # a launch that leaves enable_fp_fusion to Triton changes numerics and speed with Triton's default (3.10
    # turns it off); the interpreter sees every launch's keyword arguments, so record them
    from triton.runtime.interpreter import InterpretedFunction

    from s2vbench.kernels.attention import attention_backward, attention_forward
    from s2vbench.kernels.causal_conv.triton_op import causal_conv_ln_silu
    from s2vbench.kernels.compile_options import COMPILE_OPTIONS

    interp.check_interpreter()  # its probe kernel runs once a process, and only here: never on a GPU
    seen = {}
    run = InterpretedFunction.run

    def recording(self, *args, **kwargs):
        seen[self.__name__] = {k: kwargs.get(k) for k in COMPILE_OPTIONS}
        return run(self, *args, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", recording)
    q = torch.randn(1, 16, 1, 16)
    for variant in ("pointer", "tma"):
        out, lse = attention_forward(q, q, q, variant=variant)
    attention_backward(torch.randn_like(q), q, q, q, out, lse)
    x = torch.randn(1, 4, 8, requires_grad=True)
    causal_conv_ln_silu(x, torch.randn(8, 4, 3), None, stride=1).sum().backward()
    assert set(seen) == {"_attn_fwd", "_attn_fwd_tma", "_attn_bwd_delta", "_attn_bwd_dkdv", "_attn_bwd_dq",
                         "_conv_fwd", "_ln_silu_fwd", "_ln_silu_bwd"}, seen
    assert all(options == COMPILE_OPTIONS for options in seen.values()), seen
