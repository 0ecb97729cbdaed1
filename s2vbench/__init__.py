"""s2vbench: a harness that checks, measures and extends Wan-S2V's FSDP + context-parallel scaling claim.

Subpackages, with dependencies pointing one way (bench -> parallel -> model -> kernels):
``kernels`` (Triton kernels with torch references), ``model`` (the Wan-S2V DiT), ``parallel`` (Ulysses, ring,
USP and FSDP), ``bench`` (harnesses, results and the performance model).
"""

__version__ = "0.1.0"
