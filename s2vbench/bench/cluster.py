"""Where a scaling sweep runs: inside torchrun or a SLURM allocation, or launching torchrun itself.

Environment detection reads torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``
and SLURM's ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``/``SLURM_JOB_NODELIST`` (nodelists such as
``gpu[01-04,07]``). ``render_sbatch`` fills the shipped template (``templates/scaling.sbatch``).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

TEMPLATE = Path(__file__).with_name("templates") / "scaling.sbatch"


def _split_top_level(s: str) -> list[str]:
    """Split on commas outside brackets: "a[1-2],b" -> ["a[1-2]", "b"]."""
    parts, depth, cur = [], 0, ""
    for ch in s:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if depth < 0:  # "gpu]01[" balances in the end but is no hostlist
            break
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth != 0:
        raise ValueError(f"unbalanced brackets in nodelist {s!r}")
    parts.append(cur)
    return [p for p in parts if p]


def parse_nodelist(nodelist: str) -> list[str]:
    """Expand a SLURM hostlist: ``gpu[01-04,07]`` -> gpu01 gpu02 gpu03 gpu04 gpu07 (zero padding kept);
    several bracket groups (``r[1-2]n[1-2]``) expand as a product."""
    hosts: list[str] = []
    for part in _split_top_level(nodelist.strip()):
        m = re.match(r"^([^\[]*)\[([^\]]+)\](.*)$", part)
        if not m:
            if "[" in part or "]" in part:
                raise ValueError(f"bad host {part!r} in nodelist {nodelist!r}")
            hosts.append(part)
            continue
        prefix, ranges, rest = m.groups()
        for r in ranges.split(","):
            if "-" in r:
                lo, hi = r.split("-", 1)
                if not (lo.isdigit() and hi.isdigit()) or int(lo) > int(hi):
                    raise ValueError(f"bad range {r!r} in nodelist {nodelist!r}")
                width = len(lo)
                names = [f"{prefix}{i:0{width}d}" for i in range(int(lo), int(hi) + 1)]
            else:
                if not r.isdigit():
                    raise ValueError(f"bad index {r!r} in nodelist {nodelist!r}")
                names = [f"{prefix}{r}"]
            for name in names:
                hosts.extend(parse_nodelist(name + rest) if "[" in rest else [name + rest])
    return hosts


@dataclass(frozen=True)
class ClusterEnv:
    """This process's place in an already-launched job."""

    launcher: str
    """"torchrun" or "slurm"."""
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    nodes: tuple[str, ...]
    """Hosts of the allocation (SLURM), or just the master (torchrun)."""


def _env_int(env, name: str, default: int | None = None, minimum: int = 0, maximum: int | None = None) -> int:
    """``env[name]`` as an integer in [minimum, maximum]; a ValueError naming the variable otherwise."""
    text = env.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum or (maximum is not None and value > maximum):
        bound = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
        raise ValueError(f"environment variable {name}={text!r}: must be {bound}; fix or unset it")
    return value


def _pair(env, rank: str, world: str) -> tuple[int, int] | None:
    """(rank, world size) from two variables that only mean something together; None when neither is set."""
    if rank not in env and world not in env:
        return None
    missing = world if rank in env else rank
    if missing not in env:
        there = rank if rank in env else world
        raise ValueError(f"environment variable {there} is set but {missing} is not: a job sets both; launch "
                         f"through torchrun or srun, or unset {there} to run outside a job")
    r, w = _env_int(env, rank), _env_int(env, world, minimum=1)
    if r >= w:  # a rank nobody waits for would hang in init_process_group
        raise ValueError(f"environment variable {rank}={r} is not below {world}={w}: ranks run from 0 to {w - 1}")
    return r, w


def detect_env(environ: dict[str, str] | None = None) -> ClusterEnv | None:
    """The job this process belongs to, or None when it runs alone. Malformed or incomplete job variables are
    a ValueError naming the variable (a bad rank or world size would otherwise hang or do nothing)."""
    env = os.environ if environ is None else environ
    torchrun = _pair(env, "RANK", "WORLD_SIZE")
    if torchrun is not None:
        addr = env.get("MASTER_ADDR", "127.0.0.1")
        return ClusterEnv("torchrun", *torchrun, _env_int(env, "LOCAL_RANK", 0), addr,
                          _env_int(env, "MASTER_PORT", 29500, 1, 65535), (addr,))
    # SLURM_NTASKS alone is an allocation's shell (salloc), not a task: only SLURM_PROCID asks for its partner
    slurm = _pair(env, "SLURM_PROCID", "SLURM_NTASKS") if "SLURM_PROCID" in env else None
    if slurm is not None:
        var = "SLURM_JOB_NODELIST" if env.get("SLURM_JOB_NODELIST") else "SLURM_NODELIST"
        text = env.get(var) or "localhost"
        try:
            nodes = tuple(parse_nodelist(text))
        except ValueError as e:
            raise ValueError(f"environment variable {var}: {e}") from None
        if not nodes:
            raise ValueError(f"environment variable {var}={text!r} names no host")
        job = _env_int(env, "SLURM_JOB_ID", 0)
        return ClusterEnv("slurm", *slurm, _env_int(env, "SLURM_LOCALID", 0), env.get("MASTER_ADDR", nodes[0]),
                          _env_int(env, "MASTER_PORT", 20000 + job % 20000, 1, 65535), nodes)
    return None


def export_for_torch(env: ClusterEnv) -> None:
    """Set the variables ``init_process_group(init_method="env://")`` reads."""
    os.environ.update(RANK=str(env.rank), WORLD_SIZE=str(env.world_size), LOCAL_RANK=str(env.local_rank),
                      MASTER_ADDR=env.master_addr, MASTER_PORT=str(env.master_port))


def render_sbatch(job_name: str, nodes: int, gpus_per_node: int, command: list[str], time_limit: str = "02:00:00",
                  partition: str | None = None, account: str | None = None, out_per_job: bool = False,
                  cpus_per_task: int = 8, workdir: str | Path = ".") -> str:
    """An sbatch script running ``command`` once per GPU (srun), inside the allocation. ``out_per_job``
    appends ``--out runs/<job name>-<job id>``, expanded in the script: every task of a job must write to
    the same folder, and one a caller left to a per-process default would differ between tasks."""
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"need nodes >= 1 and gpus_per_node >= 1, got {nodes} and {gpus_per_node}")
    if cpus_per_task < 1:
        raise ValueError(f"need cpus_per_task >= 1, got {cpus_per_task}")
    if not re.fullmatch(r"(\d+-)?\d{1,3}(:\d{2}){0,2}", time_limit):
        raise ValueError(f"SLURM time limit {time_limit!r}: use [days-]hours:minutes:seconds, e.g. 02:00:00 or "
                         f"1-12:00:00")
    for what, value in (("partition", partition), ("account", account)):
        if value is not None and not re.fullmatch(r"[A-Za-z0-9._,-]+", value):
            raise ValueError(f"SLURM {what} {value!r}: use letters, digits and . _ , - only")
    if not re.fullmatch(r"[A-Za-z0-9._+-]+", job_name):  # #SBATCH lines split on blanks; the name is a path too
        raise ValueError(f"SLURM job name {job_name!r}: use letters, digits and . _ + - only (for s2vbench "
                         f"scaling --sbatch: in the sweep file's name)")
    extra = "".join(f"#SBATCH --{k}={v}\n" for k, v in (("partition", partition), ("account", account)) if v)
    text = TEMPLATE.read_text()
    cmd = " ".join(shlex.quote(c) for c in command)
    if out_per_job:
        cmd += f' --out "runs/{job_name}-$SLURM_JOB_ID"'
    return text.format(job_name=job_name, nodes=nodes, gpus_per_node=gpus_per_node, time_limit=time_limit,
                       extra_sbatch=extra, command=cmd, cpus_per_task=cpus_per_task,
                       workdir=shlex.quote(str(workdir)))


__all__ = ["ClusterEnv", "detect_env", "export_for_torch", "parse_nodelist", "render_sbatch"]
