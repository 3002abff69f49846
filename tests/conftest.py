"""Shared fixtures: the tiny models are built once per session (they are deterministic)."""

from __future__ import annotations

import pytest
import torch

from engine.models.load import load_model

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def tiny_parts():
    return load_model("tiny")


@pytest.fixture(scope="session")
def tiny_sdxl_parts():
    return load_model("tiny-sdxl")
