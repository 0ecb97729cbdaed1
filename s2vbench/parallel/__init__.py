"""Sequence parallelism (Ulysses, ring, USP) and FSDP for the Wan-S2V model."""
