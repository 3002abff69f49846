"""GPU power, memory and utilisation through NVML (the optional `nvml` extra: nvidia-ml-py).

Meant for the once-a-second stats line: each `read()` is four NVML queries (a few tens of
microseconds each, no CUDA context work, no sync with the render stream). Without the
library or a GPU, `GpuStats.open` returns None after one debug line, and the stats simply
lack these fields. A field the GPU does not report (power on some boards, anything on a
MIG slice) reads as None and is not asked for again.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("streamvj.gpu_stats")

_NOT_SUPPORTED = 3  # NVML_ERROR_NOT_SUPPORTED, when the module does not export the constant
_MB = 1024 * 1024


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class GpuStats:
    """Readings for one GPU. Create with `open` / `for_device`; `close` when done."""

    def __init__(self, nvml: Any, handle: Any, name: str):
        self._nvml, self._handle, self.name = nvml, handle, name
        self._unsupported: set[str] = set()
        self._warned: set[str] = set()
        self._closed = False

    @classmethod
    def open(cls, device_index: int = 0, uuid: str | None = None) -> GpuStats | None:
        """Stats for NVML device `device_index` (or the GPU with this UUID); None if unavailable."""
        try:
            import pynvml
        except ImportError:
            log.debug("GPU power/VRAM stats off: NVML is not installed (pip install 'streamvj[nvml]')")
            return None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            log.debug("GPU power/VRAM stats off: NVML did not start (%s)", exc)
            return None
        try:
            if uuid:
                uuid = uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"
                handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
            else:
                handle = pynvml.nvmlDeviceGetHandleByIndex(device_index)
            name = _text(pynvml.nvmlDeviceGetName(handle))
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            log.debug("GPU power/VRAM stats off: no NVML device %s (%s)", uuid or device_index, exc)
            return None
        return cls(pynvml, handle, name)

    @classmethod
    def for_device(cls, device: torch.device | str) -> GpuStats | None:
        """Stats for a torch CUDA device, matched by UUID: CUDA and NVML can number GPUs differently
        (CUDA_VISIBLE_DEVICES, fastest-first ordering)."""
        device = torch.device(device)
        if device.type != "cuda" or not torch.cuda.is_available():
            log.debug("GPU power/VRAM stats off: device is %s", device)
            return None
        index = device.index if device.index is not None else torch.cuda.current_device()
        uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
        return cls.open(index, uuid=str(uuid) if uuid else None)

    def _query(self, field: str, fn: Any) -> Any:
        if field in self._unsupported or self._closed:
            return None
        try:
            return fn(self._handle)
        except self._nvml.NVMLError as exc:
            if getattr(exc, "value", None) == getattr(self._nvml, "NVML_ERROR_NOT_SUPPORTED", _NOT_SUPPORTED):
                self._unsupported.add(field)
                log.debug("%s does not report %s", self.name, field)
            elif field not in self._warned:
                self._warned.add(field)  # e.g. a GPU that fell off the bus: say it once, not every second
                log.warning("NVML could not read %s on %s: %s", field, self.name, exc)
            return None

    def read(self) -> dict[str, float | None]:
        """{"vram_mb", "vram_total_mb", "gpu_power_w", "gpu_util"}; a field that cannot be read is None.

        VRAM is the whole device's use (every process), which is what tells whether the card
        is about to run out; torch.cuda.memory_reserved() is this process's share.
        """
        nvml = self._nvml
        memory = self._query("memory", nvml.nvmlDeviceGetMemoryInfo)
        power_mw = self._query("power", nvml.nvmlDeviceGetPowerUsage)
        util = self._query("utilization", nvml.nvmlDeviceGetUtilizationRates)
        return {
            "vram_mb": None if memory is None else round(memory.used / _MB, 1),
            "vram_total_mb": None if memory is None else round(memory.total / _MB, 1),
            "gpu_power_w": None if power_mw is None else round(power_mw / 1000.0, 1),
            "gpu_util": None if util is None else float(util.gpu),
        }

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError as exc:
                log.debug("NVML shutdown: %s", exc)

    def __enter__(self) -> GpuStats:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
