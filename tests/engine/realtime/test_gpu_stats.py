"""GpuStats against a fake pynvml (swapped in at the import boundary); the real one only on a GPU."""

from __future__ import annotations

import logging
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from engine.realtime.gpu_stats import GpuStats


class FakeNVMLError(Exception):
    def __init__(self, value: int):
        super().__init__(f"NVML error {value}")
        self.value = value


def fake_nvml(*, init_error: int | None = None, devices: int = 1, power_error: int | None = None,
              memory_error: int | None = None) -> types.ModuleType:
    m = types.ModuleType("pynvml")
    m.NVMLError = FakeNVMLError
    m.NVML_ERROR_NOT_SUPPORTED = 3
    m.calls = {"init": 0, "shutdown": 0, "power": 0}

    def init():
        m.calls["init"] += 1
        if init_error is not None:
            raise FakeNVMLError(init_error)

    def by_index(i):
        if i >= devices:
            raise FakeNVMLError(2)
        return ("handle", i)

    def power(h):
        m.calls["power"] += 1
        if power_error is not None:
            raise FakeNVMLError(power_error)
        return 251_400  # milliwatts

    def memory(h):
        if memory_error is not None:
            raise FakeNVMLError(memory_error)
        return SimpleNamespace(used=3 * 1024**3, total=80 * 1024**3, free=77 * 1024**3)

    m.nvmlInit = init
    m.nvmlShutdown = lambda: m.calls.__setitem__("shutdown", m.calls["shutdown"] + 1)
    m.nvmlDeviceGetHandleByIndex = by_index
    m.nvmlDeviceGetHandleByUUID = lambda u: ("uuid", u)
    m.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    m.nvmlDeviceGetMemoryInfo = memory
    m.nvmlDeviceGetPowerUsage = power
    m.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=87, memory=40)
    return m


def test_reads_power_memory_and_utilisation(monkeypatch):
    fake = fake_nvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with GpuStats.open(0) as stats:
        assert stats.name == "NVIDIA H100 80GB HBM3"
        assert stats.read() == {"vram_mb": 3072.0, "vram_total_mb": 81920.0, "gpu_power_w": 251.4, "gpu_util": 87.0}
    assert fake.calls["shutdown"] == 1


def test_missing_library_is_none_with_one_debug_line(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    with caplog.at_level(logging.DEBUG, logger="streamvj.gpu_stats"):
        assert GpuStats.open(0) is None
    assert len(caplog.records) == 1 and "streamvj[nvml]" in caplog.text
    assert caplog.records[0].levelno == logging.DEBUG


def test_no_driver_or_no_device_is_none(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(init_error=9))  # driver not loaded
    with caplog.at_level(logging.DEBUG, logger="streamvj.gpu_stats"):
        assert GpuStats.open(0) is None
    fake = fake_nvml(devices=1)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert GpuStats.open(3) is None
    assert fake.calls["shutdown"] == 1  # init was balanced
    assert all(r.levelno == logging.DEBUG for r in caplog.records)


def test_unsupported_power_is_none_and_not_asked_again(monkeypatch):
    fake = fake_nvml(power_error=3)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    stats = GpuStats.open(0)
    for _ in range(3):
        reading = stats.read()
    assert reading["gpu_power_w"] is None and reading["vram_mb"] == 3072.0
    assert fake.calls["power"] == 1


def test_other_errors_warn_once_and_keep_reading(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(memory_error=15))  # GPU lost
    stats = GpuStats.open(0)
    with caplog.at_level(logging.WARNING, logger="streamvj.gpu_stats"):
        readings = [stats.read() for _ in range(3)]
    assert all(r["vram_mb"] is None and r["gpu_power_w"] == 251.4 for r in readings)
    assert len(caplog.records) == 1


def test_uuid_gets_the_nvml_prefix(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    assert GpuStats.open(uuid="1234-abcd")._handle == ("uuid", "GPU-1234-abcd")
    assert GpuStats.open(uuid="MIG-77")._handle == ("uuid", "MIG-77")


def test_for_device_off_cuda_is_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    assert GpuStats.for_device("cpu") is None


def test_read_after_close_is_all_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    stats = GpuStats.open(0)
    stats.close()
    stats.close()
    assert set(stats.read().values()) == {None}


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_real_nvml_on_the_torch_device():
    pytest.importorskip("pynvml")
    stats = GpuStats.for_device("cuda")
    assert stats is not None
    reading = stats.read()
    assert reading["vram_total_mb"] and reading["vram_mb"] is not None and 0 <= reading["gpu_util"] <= 100
    assert torch.cuda.get_device_name() in stats.name or stats.name in torch.cuda.get_device_name()
    stats.close()
