"""Data side of variable-resolution training: manifests, token-budget bucketing and the DP x CP sampler.

It may import :mod:`s2vbench.model` for the geometry, never :mod:`s2vbench.bench` or :mod:`s2vbench.parallel`;
the per-clip step cost is passed in as a callable (``bench.analytic.clip_step_cost`` in the benchmark).
"""

from .bucketing import BucketError, BucketGeometry, BucketPlan, ClipTarget, clip_tokens, fit_clip, plan_buckets
from .manifest import ManifestError, ManifestRow, ReadResult, read_manifest, synthetic_manifest, write_manifest
from .sampler import BucketSampler, SamplerError, dp_cost_imbalance

__all__ = ["BucketError", "BucketGeometry", "BucketPlan", "BucketSampler", "ClipTarget", "ManifestError",
           "ManifestRow", "ReadResult", "SamplerError", "clip_tokens", "dp_cost_imbalance", "fit_clip", "plan_buckets",
           "read_manifest", "synthetic_manifest", "write_manifest"]
