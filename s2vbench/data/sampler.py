"""A batch sampler for a data-parallel x context-parallel job over bucketed clips.

Global rank r sits in data-parallel group ``r // cp`` (the mesh is ``dp x ring x ulysses`` with the
context-parallel ranks innermost, as in :mod:`s2vbench.parallel.mesh`), and every rank of a context-parallel
group receives the same batch, since together they process one sequence.

One epoch's plan, a pure function of (seed, epoch, the bucketing): each bucket's clips are shuffled and cut into
batches of its batch size (the last may be partial); the batches are ordered by predicted cost, ties broken at
random, and consecutive runs of ``dp`` batches form a step, so the data-parallel ranks of a step get batches of
near-equal cost; the steps are then shuffled, as are the ranks within a step. ``len(batches) % dp`` batches (at
random) are left out of the epoch and counted, because every rank must get a batch in every step; a different
set is left out in each epoch.

Resuming: ``state_dict()`` holds the epoch and the number of steps handed out; a sampler given it with
``load_state_dict`` continues at the next step of the same plan, so nothing is lost or repeated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


class SamplerError(ValueError):
    """A sampler configuration or state that cannot work, with the fix."""


@dataclass(frozen=True)
class EpochPlan:
    """All steps of one epoch."""

    steps: list[tuple[tuple[int, ...], ...]]
    """steps[s][d]: the clip indices of data-parallel rank d's batch at step s."""
    costs: list[tuple[float, ...]]
    """costs[s][d]: the predicted cost of that batch."""
    dropped: list[tuple[int, ...]]
    """Batches left out of the epoch so every step has one batch per data-parallel rank."""


def dp_cost_imbalance(step_costs: Sequence[Sequence[float]]) -> tuple[float, float]:
    """(overall, worst step) straggler overhead: sum over steps of max rank cost / sum of mean rank cost - 1,
    and the largest per-step max / mean - 1. Data-parallel ranks wait for the slowest at every step, so this is
    the fraction of compute lost to imbalance."""
    if not step_costs:
        return 0.0, 0.0
    arr = [np.asarray(c, dtype=float) for c in step_costs]
    total_max = sum(float(a.max()) for a in arr)
    total_mean = sum(float(a.mean()) for a in arr)
    worst = max(float(a.max() / a.mean() - 1.0) for a in arr)
    return total_max / total_mean - 1.0, worst


class BucketSampler:
    """Yields this rank's batches (tuples of clip indices) for the current epoch."""

    def __init__(self, bucket_of: Sequence[int], batch_sizes: Sequence[int], clip_costs: Sequence[float], dp: int,
                 cp: int = 1, rank: int = 0, seed: int = 0):
        if dp < 1 or cp < 1:
            raise SamplerError(f"dp={dp}, cp={cp}: both degrees must be positive integers")
        if not 0 <= rank < dp * cp:
            raise SamplerError(f"rank {rank} is outside the job's {dp} x {cp} = {dp * cp} ranks")
        if len(batch_sizes) != len(clip_costs):
            raise SamplerError(f"{len(batch_sizes)} batch sizes but {len(clip_costs)} clip costs; one of each per bucket")
        nb = len(batch_sizes)
        if any(not 0 <= b < nb for b in bucket_of):
            raise SamplerError(f"bucket_of names a bucket outside 0..{nb - 1}")
        if any(b < 1 for b in batch_sizes):
            raise SamplerError(f"batch sizes {list(batch_sizes)} must all be at least 1")
        self.bucket_of = np.asarray(bucket_of, dtype=np.int64)
        self.batch_sizes = [int(b) for b in batch_sizes]
        self.clip_costs = [float(c) for c in clip_costs]
        self.dp, self.cp, self.rank, self.seed = dp, cp, rank, seed
        self.epoch = 0
        self._step = 0
        self._plan: EpochPlan | None = None
        self._plan_epoch = -1
        digest = hashlib.blake2b(digest_size=8)
        digest.update(self.bucket_of.tobytes())
        digest.update(repr((self.batch_sizes, self.clip_costs, dp, cp, seed)).encode())
        self.fingerprint = digest.hexdigest()

    @classmethod
    def from_plan(cls, plan, dp: int, cp: int = 1, rank: int = 0, seed: int = 0) -> BucketSampler:
        """A sampler over a :class:`~s2vbench.data.bucketing.BucketPlan`."""
        return cls(plan.bucket_of, [b.batch_size for b in plan.buckets], [b.clip_cost for b in plan.buckets], dp,
                   cp, rank, seed)

    @property
    def dp_rank(self) -> int:
        return self.rank // self.cp

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first step."""
        self.epoch, self._step = int(epoch), 0

    def epoch_plan(self, epoch: int | None = None) -> EpochPlan:
        """The whole plan of an epoch (the same on every rank)."""
        epoch = self.epoch if epoch is None else epoch
        if self._plan is not None and self._plan_epoch == epoch:
            return self._plan
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, 0x5256]))
        batches: list[tuple[int, ...]] = []
        costs: list[float] = []
        for k, (size, c) in enumerate(zip(self.batch_sizes, self.clip_costs)):
            clips = rng.permutation(np.flatnonzero(self.bucket_of == k))
            for i in range(0, len(clips), size):
                chunk = tuple(int(x) for x in clips[i:i + size])
                batches.append(chunk)
                costs.append(c * len(chunk))
        order = np.lexsort((rng.random(len(batches)), np.asarray(costs)))
        drop = set(rng.choice(len(order), size=len(order) % self.dp, replace=False).tolist()) if len(order) else set()
        kept = [int(i) for j, i in enumerate(order) if j not in drop]
        steps, step_costs = [], []
        for s in rng.permutation(len(kept) // self.dp):
            members = kept[s * self.dp:(s + 1) * self.dp]
            members = [members[i] for i in rng.permutation(self.dp)]
            steps.append(tuple(batches[i] for i in members))
            step_costs.append(tuple(costs[i] for i in members))
        plan = EpochPlan(steps, step_costs, [batches[int(order[j])] for j in sorted(drop)])
        self._plan, self._plan_epoch = plan, epoch
        return plan

    def __len__(self) -> int:
        return len(self.epoch_plan().steps)

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        plan = self.epoch_plan()
        while self._step < len(plan.steps):
            batch = plan.steps[self._step][self.dp_rank]
            self._step += 1  # counted when handed out: a state saved after consuming it resumes at the next one
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self._step, "seed": self.seed, "dp": self.dp, "cp": self.cp,
                "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` left off; the bucketing, degrees and seed must be the ones it was saved with."""
        for key in ("seed", "dp", "cp", "fingerprint"):
            if state.get(key) != getattr(self, key):
                raise SamplerError(f"sampler state has {key}={state.get(key)!r} but this sampler has "
                                   f"{getattr(self, key)!r}; resume with the same manifest, bucketing, seed and "
                                   f"dp x cp degrees, or start a fresh epoch with set_epoch()")
        self.epoch, self._step = int(state["epoch"]), int(state["step"])


__all__ = ["BucketSampler", "EpochPlan", "SamplerError", "dp_cost_imbalance"]
