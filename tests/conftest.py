"""Shared fixtures: the tiny models are built once per session (they are deterministic), and no
test may leave a shared-memory block behind (checked after each test and once more at the end)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from engine.models.load import load_model

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

# Tests name the shared-memory blocks they make `<prefix>_<pid of this pytest>[_...]`, so that a
# block left behind is told apart from other runs' (several can share a machine). A new prefix goes here.
SHM_TEST_PREFIXES = ("svj", "e2e_in", "e2e_out", "osc_e2e")
_OURS = re.compile(rf"^(?:{'|'.join(SHM_TEST_PREFIXES)})_{os.getpid()}(?:_|$)")
_SHM_DIR = Path("/dev/shm")  # POSIX shared memory is listable only on Linux; elsewhere nothing is checked


def _our_blocks() -> set[str]:
    if not _SHM_DIR.is_dir():
        return set()
    return {p.name for p in _SHM_DIR.iterdir() if _OURS.match(p.name)}


def _remove(names: set[str]) -> None:
    for name in names:
        (_SHM_DIR / name).unlink(missing_ok=True)  # what shm_unlink does on Linux


_AT_START = _our_blocks()  # a recycled pid may find an old run's blocks: not this run's fault


@pytest.fixture(autouse=True)
def _no_shared_memory_left_behind(request: pytest.FixtureRequest):
    before = _our_blocks()
    yield
    left = _our_blocks() - before
    if left:
        _remove(left)  # the next test and the next run start clean either way
        pytest.fail(f"{request.node.nodeid} left shared memory behind: {', '.join(sorted(left))}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Backstop for blocks made outside a test (session fixtures, imports, background threads)."""
    left = _our_blocks() - _AT_START
    if left:
        _remove(left)
        print(f"\nERROR: shared memory left behind by this test run (now removed): {', '.join(sorted(left))}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def tiny_parts():
    return load_model("tiny")


@pytest.fixture(scope="session")
def tiny_sdxl_parts():
    return load_model("tiny-sdxl")
