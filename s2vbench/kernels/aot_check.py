"""Compile every kernel ahead of time for a GPU architecture, without a GPU, and check its shared memory.

Triton's wheel carries ptxas, so a CPU machine can compile for sm_80 (A100) and sm_90 (H100, H200) with the
launch configs the wrappers pick. A config that needs more shared memory than the GPU gives a block compiles
fine and fails at its first launch with OutOfResources; a Triton upgrade that breaks a kernel's compile shows
up here too, on the CPU CI. Run ``python -m s2vbench.kernels.aot_check [--arch 80 90] [--registers]`` (not
under ``TRITON_INTERPRET=1``, which replaces the compiled kernels with interpreted ones); ``--registers`` adds
each kernel's registers and spills a thread, from Triton's ptxas run again verbose."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace

import torch
import triton

from .attention import triton_kernels as attention_kernels
from .attention.ops import _precision, backward_config, forward_config
from .causal_conv import triton_op as conv
from .compile_options import COMPILE_OPTIONS
from .interpreter import interpreting

SHARED_MEMORY_LIMIT = {80: 166_912, 90: 232_448}
"""Bytes of shared memory a block may opt into (cudaDevAttrMaxSharedMemoryPerBlockOptin): sm_80 is the A100,
sm_90 the H100 and H200; Triton checks a kernel against it at launch."""
HEAD_DIMS = (64, 128)
"""Head dims compiled: 14b's is 128 (5120 / 40 heads); 64 takes the other branch of the configs."""
DTYPES = (torch.float32, torch.bfloat16)
"""float16 tiles are bf16's size."""

_CUDA = torch.device("cuda")  # a device name only, for the config functions
_ELEMENT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
_INPUT_DTYPE = {"Q", "K", "V", "O", "DO", "DK", "DV", "DQ", "X", "W", "BIAS", "Y", "DY"}
_FLOAT32 = {"LSE", "DELTA", "DLSE", "Z", "DZ", "MEAN", "RSTD"}
_SCALARS = {"qk_scale": "fp32", "scale": "fp32", "eps": "fp32"}


@dataclass(frozen=True)
class Launch:
    """One kernel as its wrapper launches it: the compile-time arguments and launch options."""

    name: str
    """What it is, e.g. "attention forward tma bf16 d128"."""
    kernel: object
    """The ``@triton.jit`` function."""
    dtype: torch.dtype
    """Input dtype; statistics and the causal conv's pre-norm buffer are float32."""
    constexprs: dict
    """Its ``tl.constexpr`` arguments."""
    num_warps: int
    """Warps a program."""
    num_stages: int | None = None
    """Software-pipeline stages (None: Triton's default)."""


def launches(arch: int) -> list[Launch]:
    """Every kernel launch of the attention and causal-conv wrappers on a GPU of compute capability ``arch``."""
    out = []
    for dtype in DTYPES:
        tag, prec = _ELEMENT[dtype], _precision(dtype)
        for d in HEAD_DIMS:
            common = dict(HAS_LENS=True, HEAD_DIM=d, PRECISION=prec)
            d_pad = max(16, triton.next_power_of_2(d))
            f, b = forward_config(d, _CUDA, dtype), backward_config(d, _CUDA)
            out.append(Launch(f"attention forward {tag} d{d}", attention_kernels._attn_fwd, dtype,
                              dict(common, D_PAD=d_pad, BLOCK_M=f.block_m, BLOCK_N=f.block_n), f.num_warps,
                              f.num_stages))
            for variant in ("tma", "tma_ws") if arch >= 90 else ():  # tensor descriptors: Hopper and later
                c = forward_config(d, _CUDA, dtype, variant)
                out.append(Launch(f"attention forward {variant} {tag} d{d}", attention_kernels._attn_fwd_tma, dtype,
                                  dict(common, BLOCK_M=c.block_m, BLOCK_N=c.block_n,
                                       WARP_SPECIALIZE=variant == "tma_ws"), c.num_warps, c.num_stages))
            out.append(Launch(f"attention backward delta {tag} d{d}", attention_kernels._attn_bwd_delta, dtype,
                              dict(HAS_DLSE=True, HEAD_DIM=d, D_PAD=d_pad, BLOCK_M=b.block_m), 4))
            for part, kernel in (("dk dv", attention_kernels._attn_bwd_dkdv), ("dq", attention_kernels._attn_bwd_dq)):
                out.append(Launch(f"attention backward {part} {tag} d{d}", kernel, dtype,
                                  dict(common, D_PAD=d_pad, BLOCK_M=b.block_m, BLOCK_N=b.block_n), b.num_warps,
                                  b.num_stages))
        bt, bco, bci, warps, stages = conv._conv_config(_CUDA, dtype)
        for stride in (1, 2):
            out.append(Launch(f"causal conv stride {stride} {tag}", conv._conv_fwd, dtype,
                              dict(KSIZE=3, STRIDE=stride, HAS_BIAS=True, BLOCK_T=bt, BLOCK_CO=bco, BLOCK_CI=bci,
                                   PRECISION="ieee" if dtype == torch.float32 else None), warps, stages))
        for way, kernel in (("forward", conv._ln_silu_fwd), ("backward", conv._ln_silu_bwd)):
            out.append(Launch(f"LayerNorm-SiLU {way} {tag}", kernel, dtype, dict(BLOCK=1024), 4))
    return out


def _signature(launch: Launch) -> dict:
    def kind(name: str) -> str:
        if name in launch.constexprs:
            return "constexpr"
        if name in _INPUT_DTYPE:
            return "*" + _ELEMENT[launch.dtype]
        if name in _FLOAT32:
            return "*fp32"
        return "*i32" if name == "KV_LENS" else _SCALARS.get(name, "i32")
    return {name: kind(name) for name in launch.kernel.arg_names}


def shared_memory_bytes(launch: Launch, arch: int) -> int:
    """Compile ``launch`` for sm_``arch`` (no GPU needed); its shared memory a block, in bytes."""
    return _compile(launch, arch).metadata.shared


def register_use(launch: Launch, arch: int) -> tuple[int, int]:
    """(registers a thread, bytes spilled to local memory a thread) of ``launch`` at sm_``arch``: its PTX run
    again through Triton's own ptxas, verbose (spills slow a kernel; the launch itself still works)."""
    import re
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    ptx = _compile(launch, arch).asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        src = f"{tmp}/kernel.ptx"
        with open(src, "w") as f:
            f.write(ptx)
        done = subprocess.run([get_ptxas(arch).path, "-v", f"--gpu-name=sm_{arch}{'a' if arch >= 90 else ''}",
                               src, "-o", f"{tmp}/kernel.cubin"], capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed: {log[-500:]}")
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    return int(regs.group(1)) if regs else 0, int(spills.group(1)) if spills else 0


def _compile(launch: Launch, arch: int):
    if interpreting():
        raise RuntimeError("ahead-of-time compiles need the compiled kernels; unset TRITON_INTERPRET")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    options = {"num_warps": launch.num_warps, **COMPILE_OPTIONS}
    if launch.num_stages is not None:
        options["num_stages"] = launch.num_stages
    signature = _signature(launch)
    # A launch tells the compiler which pointers are 16-byte aligned and which integers divide by 16 (the
    # models' tensors and strides are): with those hints the loads vectorise and pipeline, and take more
    # shared memory (bf16 attention: 98-131 KiB against 48 KiB without), so the check compiles with them.
    hints = {(i,): [["tt.divisibility", 16]] for i, kind in enumerate(signature.values())
             if kind.startswith("*") or kind == "i32"}
    return triton.compile(ASTSource(launch.kernel, signature, launch.constexprs, hints),
                          target=GPUTarget("cuda", arch, 32), options=options)


def check(arch: int) -> list[tuple[str, int | None, str]]:
    """(launch, shared bytes or None, problem or "") for every launch at sm_``arch``."""
    limit = SHARED_MEMORY_LIMIT[arch]
    rows = []
    for launch in launches(arch):
        try:
            shared = shared_memory_bytes(launch, arch)
        except Exception as e:  # noqa: BLE001 - a compile failure is a finding, reported with the rest
            rows.append((launch.name, None, f"does not compile: {type(e).__name__}: {str(e).splitlines()[0][:200]}"))
            continue
        problem = "" if shared <= limit else f"over the {limit:,} B limit"
        if not problem and launch.constexprs.get("WARP_SPECIALIZE") and not warp_specialised(launch, arch):
            problem = "warp specialisation not applied: the same PTX as without it (Triton skips it on 8 warps)"
        rows.append((launch.name, shared, problem))
    return rows


def warp_specialised(launch: Launch, arch: int) -> bool:
    """Whether ``WARP_SPECIALIZE`` changed ``launch``'s code: Triton drops the request without a word where its
    pass does not apply, and the variant would then time the same kernel under another name."""
    plain = replace(launch, constexprs=dict(launch.constexprs, WARP_SPECIALIZE=False))
    return _compile(launch, arch).asm["ptx"] != _compile(plain, arch).asm["ptx"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m s2vbench.kernels.aot_check", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=sorted(SHARED_MEMORY_LIMIT),
                        choices=sorted(SHARED_MEMORY_LIMIT), help="compute capabilities, e.g. 90 for sm_90")
    parser.add_argument("--registers", action="store_true",
                        help="also run each kernel's PTX through ptxas -v: registers and spills a thread (slower)")
    args = parser.parse_args(argv)
    from triton.backends import backends

    if "nvidia" not in backends:
        print(f"Triton {triton.__version__} has no NVIDIA backend to compile for", file=sys.stderr)
        return 2
    bad = 0
    for arch in args.arch:
        print(f"sm_{arch} (Triton {triton.__version__}; limit {SHARED_MEMORY_LIMIT[arch]:,} B a block)")
        by_name = {launch.name: launch for launch in launches(arch)}
        for name, shared, problem in check(arch):
            bad += bool(problem)
            regs = ""
            if args.registers and shared is not None:
                n, spilled = register_use(by_name[name], arch)
                regs = f"  {n:3d} registers, {spilled:,} B spilled a thread" if spilled else f"  {n:3d} registers"
            print(f"  {name:40s} {'-' if shared is None else f'{shared:,} B':>12s}  {problem or 'ok'}{regs}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
