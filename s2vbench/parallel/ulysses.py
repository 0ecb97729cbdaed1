"""Ulysses degree checks. The all-to-alls themselves run inside the context-parallel attention op
(:mod:`s2vbench.parallel.sequence_parallel`): sequence-sharded -> head-sharded q/k/v, and back for the output."""

from __future__ import annotations


def valid_ulysses_degrees(num_heads: int) -> list[int]:
    return [d for d in range(1, num_heads + 1) if num_heads % d == 0]


__all__ = ["valid_ulysses_degrees"]
