"""Every Triton kernel compiles for the profiles' GPUs (A100: sm_80; H100, H200: sm_90) with the config its
wrapper picks and fits their shared memory, checked on CPU by compiling ahead of time (``kernels.aot_check``).
The compiles run in a child process: the tests' Triton interpreter replaces the compiled kernels."""

import os
import subprocess
import sys

import pytest
import torch

from conftest import ON_GPU, REPO

triton = pytest.importorskip("triton")
from triton.backends import backends  # noqa: E402

if "nvidia" not in backends:
    pytest.skip("this Triton has no NVIDIA backend to compile for", allow_module_level=True)

from s2vbench.kernels import aot_check  # noqa: E402


def _compiled(args: list[str], timeout: int = 600, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` with the compiled kernels (no interpreter), plus ``env``."""
    env = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("arch", sorted(aot_check.SHARED_MEMORY_LIMIT))
def test_every_kernel_compiles_and_fits_shared_memory(arch):
    out = _compiled(["-m", "s2vbench.kernels.aot_check", "--arch", str(arch)])
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("  ")]
    assert len(rows) == len(aot_check.launches(arch)) and all(r.endswith(" ok") for r in rows), out.stdout


def test_configs_over_the_limit_are_caught():
    # at head_dim 128 on an A100: the float32 forward tile the wrapper used before 2026-12-03 (128 x 64 keys
    # over 3 stages), and a bf16 one of 128 x 128 over 4 stages, which fits only if the compile misses the
    # alignment hints a real launch gives (without them its loads neither vectorise nor pipeline)
    code = ("import torch; from s2vbench.kernels import aot_check as a; "
            "from s2vbench.kernels.attention import triton_kernels as k; "
            "c = lambda dt, n, w, st: a.shared_memory_bytes(a.Launch('x', k._attn_fwd, dt, dict(HAS_LENS=True, "
            "HEAD_DIM=128, D_PAD=128, PRECISION='ieee' if dt == torch.float32 else None, BLOCK_M=128, BLOCK_N=n), "
            "w, st), 80); print(c(torch.float32, 64, 8, 3), c(torch.bfloat16, 128, 8, 4))")
    out = _compiled(["-c", code])
    assert out.returncode == 0, out.stderr[-3000:]
    fp32, bf16 = map(int, out.stdout.split()[-2:])
    assert min(fp32, bf16) > aot_check.SHARED_MEMORY_LIMIT[80], (fp32, bf16)


def test_registers_and_spills_come_from_ptxas():
    out = _compiled(["-m", "s2vbench.kernels.aot_check", "--arch", "90", "--registers"])
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("  ")]
    # every row now names its registers (1 to 255 a thread); a spill is reported, not failed
    regs = [int(r.split(" registers")[0].split()[-1]) for r in rows]
    assert len(regs) == len(aot_check.launches(90)) and all(1 <= n <= 255 for n in regs), out.stdout


def test_compile_failures_and_excess_are_reported_not_raised(monkeypatch):
    def fake(launch, arch):
        if "dq" in launch.name:
            raise RuntimeError("PassManager::run failed\nmore")
        return 10 ** 6 if "delta" in launch.name else 1024

    monkeypatch.setattr(aot_check, "shared_memory_bytes", fake)
    rows = {name: (shared, problem) for name, shared, problem in aot_check.check(80)}
    assert rows["attention backward dq bf16 d128"] == (None, "does not compile: RuntimeError: PassManager::run failed")
    assert rows["attention backward delta fp32 d64"] == (10 ** 6, "over the 166,912 B limit")
    assert rows["attention forward bf16 d128"] == (1024, "")
    monkeypatch.setattr(aot_check, "check", lambda arch: [("x", None, "does not compile: boom")])
    assert aot_check.main(["--arch", "90"]) == 1


@pytest.mark.skipif(ON_GPU, reason="the tests use the interpreter only without a GPU")
def test_compiling_under_the_interpreter_is_refused():
    launch = aot_check.launches(90)[0]
    assert launch.dtype == torch.float32
    with pytest.raises(RuntimeError, match="unset TRITON_INTERPRET"):
        aot_check.shared_memory_bytes(launch, 90)


def test_a_warp_specialisation_triton_drops_is_caught():
    # on 8 warps Triton skips the pass without a word (the config tma_ws had before 2026-12-03): the row
    # labelled warp-specialised would time the plain TMA kernel again
    code = ("import dataclasses; from s2vbench.kernels import aot_check as a; "
            "l = next(x for x in a.launches(90) if x.name == 'attention forward tma_ws bf16 d128'); "
            "old = dataclasses.replace(l, num_warps=8, constexprs=dict(l.constexprs, BLOCK_M=128)); "
            "print(a.warp_specialised(l, 90), a.warp_specialised(old, 90))")
    out = _compiled(["-c", code])
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["True", "False"], out.stdout


def test_fma_fusion_is_stated_not_left_to_tritons_default():
    # Triton 3.10 turns fusion off by default (TRITON_DEFAULT_FP_FUSION=0 is that default today): the checked
    # compile must keep the FMAs the kernels' accuracy and the committed report were measured with. Without
    # fusion Triton writes its float32 multiplies and adds with explicit rounding (mul.rn, add.rn), which ptxas
    # may not contract.
    code = ("from s2vbench.kernels import aot_check as a; "
            "l = next(x for x in a.launches(80) if x.name == 'attention forward bf16 d128'); "
            "p = a._compile(l, 80).asm['ptx']; print(p.count('fma.rn.f32'), p.count('mul.rn.f32'))")
    out = _compiled(["-c", code], env={"TRITON_DEFAULT_FP_FUSION": "0"})
    assert out.returncode == 0, out.stderr[-3000:]
    fused, unfusable = map(int, out.stdout.split()[-2:])
    assert fused > 0 and unfusable == 0, out.stdout
