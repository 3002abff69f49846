"""Acceleration: backend choice and fallback, CUDA graphs, device transfers, TensorRT and its cache."""
