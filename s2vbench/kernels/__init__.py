"""Triton kernels, each with a plain-torch reference. Imports nothing else of s2vbench."""
