from __future__ import annotations

import pytest

from engine.errors import ModelLoadError
from engine.models.load import load_model
from engine.models.single_file import FORMAT_KEY, save_single_file
from tests.engine.models.test_load import assert_same_output


@pytest.mark.parametrize("name", ["tiny", "tiny-sdxl"])
def test_single_file_round_trip_is_bit_exact(tmp_path, name):
    parts = load_model(name)
    save_single_file(parts, tmp_path / "model.safetensors")
    loaded = load_model(str(tmp_path / "model.safetensors"))
    assert loaded.family is parts.family
    assert_same_output(parts, loaded)


def test_corrupt_safetensors_file(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="not a readable .safetensors"):
        load_model(str(bad))


def test_a_newer_streamvj_format_is_refused_clearly(tmp_path):
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "future.safetensors"
    save_file({"unet.x": torch.zeros(1)}, str(path), metadata={FORMAT_KEY: "99"})
    with pytest.raises(ModelLoadError, match="single-file format 99"):
        load_model(str(path))
