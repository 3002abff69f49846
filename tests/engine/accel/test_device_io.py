from __future__ import annotations

import pytest
import torch

from engine.accel.device_io import EVENTS, DeviceDownload

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


@pytest.mark.cuda
@cuda
def test_upload_stages_on_its_own_stream_and_hands_the_bytes_to_compute():
    from engine.accel.device_io import SLOTS, DeviceUpload

    device = torch.device("cuda")
    upload = DeviceUpload(device)
    target = torch.zeros((2, 4, 4, 4), dtype=torch.uint8, device=device)
    seen = []
    for k in range(SLOTS + 2):
        host = torch.full((2, 4, 4, 4), k, dtype=torch.uint8).pin_memory()
        upload.upload(host, lambda staged: (seen.append(staged.data_ptr()), target.copy_(staged)))
        target.add_(1)  # compute-stream work after the consume: ordered behind the copy
        torch.cuda.current_stream().synchronize()
        assert torch.equal(target.cpu(), torch.full((2, 4, 4, 4), k + 1, dtype=torch.uint8))
    assert seen[0] == seen[SLOTS] and len(set(seen[:SLOTS])) == SLOTS  # a ring of staging slots
    other = torch.ones((1, 8, 8, 4), dtype=torch.uint8).pin_memory()
    upload.upload(other, lambda staged: target[:1, :4, :4].copy_(staged[:, :4, :4]))  # a new size reallocates
    torch.cuda.current_stream().synchronize()
    assert target[0].sum().item() == 4 * 4 * 4


@pytest.mark.cuda
@cuda
def test_download_leaves_the_ordering_to_a_producer_that_takes_the_event():
    device = torch.device("cuda")
    download = DeviceDownload(device)
    result = torch.full((4, 4, 4), 7, dtype=torch.uint8, device=device)
    host = torch.empty((4, 4, 4), dtype=torch.uint8).pin_memory()
    taken = []

    class Producer:
        def output_read(self, output, event):
            taken.append(event)
            return True

    landed = download.start(result, host, output_read=Producer().output_read)
    assert taken == [landed]
    torch.cuda.current_stream().wait_event(landed)  # what StreamPipeline does before rewriting the buffer
    result.fill_(0)
    landed.synchronize()
    assert torch.equal(host, torch.full((4, 4, 4), 7, dtype=torch.uint8))
