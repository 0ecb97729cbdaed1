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


def detect_env(environ: dict[str, str] | None = None) -> ClusterEnv | None:
    """The job this process belongs to, or None when it runs alone."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return ClusterEnv("torchrun", int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                          env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)),
                          (env.get("MASTER_ADDR", "127.0.0.1"),))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        nodes = tuple(parse_nodelist(env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST", "localhost")))
        job = int(env.get("SLURM_JOB_ID", "0"))
        return ClusterEnv("slurm", int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]),
                          int(env.get("SLURM_LOCALID", 0)), env.get("MASTER_ADDR", nodes[0]),
                          int(env.get("MASTER_PORT", 20000 + job % 20000)), nodes)
    return None


def export_for_torch(env: ClusterEnv) -> None:
    """Set the variables ``init_process_group(init_method="env://")`` reads."""
    os.environ.update(RANK=str(env.rank), WORLD_SIZE=str(env.world_size), LOCAL_RANK=str(env.local_rank),
                      MASTER_ADDR=env.master_addr, MASTER_PORT=str(env.master_port))


def render_sbatch(job_name: str, nodes: int, gpus_per_node: int, command: list[str], time_limit: str = "02:00:00",
                  partition: str | None = None, account: str | None = None) -> str:
    """An sbatch script running ``command`` once per GPU (srun), inside the allocation."""
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"need nodes >= 1 and gpus_per_node >= 1, got {nodes} and {gpus_per_node}")
    extra = "".join(f"#SBATCH --{k}={v}\n" for k, v in (("partition", partition), ("account", account)) if v)
    text = TEMPLATE.read_text()
    return text.format(job_name=job_name, nodes=nodes, gpus_per_node=gpus_per_node, time_limit=time_limit,
                       extra_sbatch=extra, command=" ".join(shlex.quote(c) for c in command))


__all__ = ["ClusterEnv", "detect_env", "export_for_torch", "parse_nodelist", "render_sbatch"]
