"""Shared-memory names for the fault tests, unlinked after each test (also when it fails)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from bridges.video.shm_block import unlink


@pytest.fixture
def names() -> Iterator[tuple[str, str]]:
    tag = f"svj_{os.getpid()}_fault"
    made = (f"{tag}_in", f"{tag}_out")
    yield made
    for name in made:
        unlink(name)
