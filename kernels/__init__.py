"""Fused Triton kernels for audio CNNs (torch + triton only)."""
