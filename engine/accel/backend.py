"""Acceleration policy in one place: which backend a preset gets here, and where it falls back.

A preset asks for `acceleration` (engine/config/schema.py: auto, none, compile, tensorrt);
`select_backend` resolves it for the device. The fallback chain, each link logged once:

    tensorrt ──(library missing, no GPU)──────────────► compile on CUDA, eager on a CPU
    tensorrt ──(engine build fails, any error)────────► compile (the pipeline is built without it)
    compile  ──(no working compiler, on the 1st frame)─► eager, for good
    CUDA graph capture fails ──────────────────────────► the same step without a graph

`resolve_device` / `resolve_dtype` turn a preset's `device` / `dtype` into torch objects.
"""

from __future__ import annotations

import logging

import torch

from engine.accel.trt_engine import tensorrt_status
from engine.errors import ConfigError

log = logging.getLogger("streamvj.backend")

DTYPES = {"float16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for, but this torch build sees no CUDA GPU "
                          f"(install a CUDA build of torch, or set device: cpu)")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # CPU half-precision kernels run 10-100x slower than fp32; GPUs want fp16.
        return torch.float16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def select_backend(requested: str, device: torch.device | str) -> tuple[str, str]:
    """("tensorrt" | "compile" | "none", reason) for a preset's `acceleration` on `device`.

    TensorRT is chosen only when the library imports and the device is CUDA (a failing
    engine build falls back later, when the pipeline is built). Otherwise: on CUDA,
    torch.compile + CUDA graphs; on a CPU, eager (compiling there takes minutes per graph
    for little gain, matching what `auto` does). `compile` and `none` are honoured as asked.
    """
    device = torch.device(device)
    cuda = device.type == "cuda" and torch.cuda.is_available()
    if requested == "none":
        return "none", "acceleration off: eager PyTorch"
    if requested == "compile":
        return "compile", "torch.compile with CUDA graphs" if cuda else "torch.compile (inductor, CPU)"
    fallback = ("compile", "torch.compile with CUDA graphs") if cuda else ("none", "eager PyTorch")
    explicit = requested == "tensorrt"  # "auto" falling back is expected, not worth a warning

    def fall_back(why: str) -> tuple[str, str]:
        reason = f"{why}; using {fallback[1]}"
        (log.warning if explicit else log.info)("acceleration %s: %s", requested, reason)
        return fallback[0], reason

    if not cuda:
        return fall_back(f"TensorRT needs an NVIDIA GPU (device is {device})")
    ok, detail = tensorrt_status()
    if not ok:
        return fall_back(detail)
    return "tensorrt", f"TensorRT {detail} engines"


def resolve_acceleration(name: str, device: torch.device) -> str:
    """The backend a preset's `acceleration` gets on `device`, logged with the reason."""
    backend, reason = select_backend(name, device)
    log.info("acceleration %s on %s: %s", name, device, reason)
    return backend
