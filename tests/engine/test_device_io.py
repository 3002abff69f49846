from __future__ import annotations

import pytest
import torch

from engine.device_io import EVENTS, DeviceDownload

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")


@pytest.mark.cuda
@cuda
def test_download_lands_in_pinned_memory_and_orders_the_next_write():
    device = torch.device("cuda")
    download = DeviceDownload(device)
    result = torch.arange(64, dtype=torch.uint8, device=device).view(4, 4, 4)
    host = torch.empty((4, 4, 4), dtype=torch.uint8).pin_memory()
    landed = download.start(result, host)
    result.fill_(0)  # the compute stream waits for the copy, so this cannot race it
    landed.synchronize()
    assert torch.equal(host, torch.arange(64, dtype=torch.uint8).view(4, 4, 4))


@pytest.mark.cuda
@cuda
def test_events_come_from_a_ring():
    download = DeviceDownload(torch.device("cuda"))
    result = torch.zeros((2, 2, 4), dtype=torch.uint8, device="cuda")
    host = torch.empty((2, 2, 4), dtype=torch.uint8).pin_memory()
    events = [download.start(result, host) for _ in range(EVENTS + 1)]
    assert events[0] is events[EVENTS] and len({id(e) for e in events[:EVENTS]}) == EVENTS
