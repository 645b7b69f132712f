"""Triton kernels, installed as ``more3s.kernels``."""
