from __future__ import annotations

import json
import os
import time

import pytest
import torch

from engine.accel.trt_cache import (
    TrtCache,
    default_cache_dir,
    engine_cache_key,
    engine_key_parts,
    model_identity,
)
from engine.models.load import load_model

BASE = dict(model_identity="abc123", component="unet", width=512, height=512, batch=2, dtype=torch.float16,
            trt_version="10.9.0", gpu_name="NVIDIA H100 80GB HBM3", extra={"opset": 17})


def parts(**changes) -> dict:
    return engine_key_parts(**{**BASE, **changes})


def key(**changes) -> str:
    return engine_cache_key(**{**BASE, **changes})


def test_identical_inputs_give_identical_keys():
    assert key() == key() == engine_cache_key(*BASE.values())
    assert key(extra={"opset": 17}) == key()
    assert len(key()) == 32 and int(key(), 16) >= 0
    assert key(dtype="float16") == key()  # torch dtype and its name are the same part


@pytest.mark.parametrize("change", [
    {"model_identity": "abc124"}, {"component": "vae_decoder"}, {"width": 768}, {"height": 576},
    {"batch": 4}, {"dtype": torch.float32}, {"trt_version": "10.9.1"}, {"gpu_name": "NVIDIA GeForce RTX 4090"},
    {"extra": {"opset": 18}}, {"extra": {"opset": 17, "tokens": 77}},
])
def test_key_changes_with_each_part(change):
    assert key(**change) != key()


def test_width_and_height_are_not_interchangeable():
    assert key(width=512, height=768) != key(width=768, height=512)


@pytest.mark.parametrize("bad", [{"width": 0}, {"batch": True}, {"height": 64.0}])
def test_bad_shapes_are_rejected(bad):
    with pytest.raises(ValueError):
        key(**bad)


def test_default_dir_is_overridable(monkeypatch, tmp_path):
    monkeypatch.setenv("STREAMVJ_TRT_CACHE", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("STREAMVJ_TRT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "streamvj" / "trt"
    assert TrtCache().root == tmp_path / "streamvj" / "trt"


# ---- model identity -----------------------------------------------------------------------------


def test_model_identity_is_stable_and_tracks_weights():
    a, b = load_model("tiny").unet, load_model("tiny").unet
    ident = model_identity(a)
    assert ident == model_identity(b)  # same seeded weights, separate builds
    with torch.no_grad():
        b.conv_in.weight.add_(1e-3)
    assert model_identity(b) != ident
    with torch.no_grad():
        b.conv_in.weight.sub_(1e-3)
        # One element deep inside a big tensor, off the strided sample: the exact checksum sees it.
        weight = b.down_blocks[1].attentions[0].transformer_blocks[0].ff.net[0].proj.weight
        flat = weight.view(-1)
        flat[flat.numel() // 2 + 3] += 0.5
    assert model_identity(b) != ident


def test_model_identity_sees_swapped_elements_and_config():
    unet = load_model("tiny").unet
    ident = model_identity(unet)
    with torch.no_grad():
        w = unet.conv_out.bias
        w.copy_(w.flip(0))  # same sum, different order
    assert model_identity(unet) != ident
    other = load_model("tiny-sdxl").unet
    assert model_identity(other) != ident


def test_model_identity_ignores_memory_format():
    unet = load_model("tiny").unet
    ident = model_identity(unet)
    unet.to(memory_format=torch.channels_last)
    assert model_identity(unet) == ident


def test_model_identity_depends_on_dtype():
    vae = load_model("tiny").vae
    ident = model_identity(vae)
    assert model_identity(vae.to(torch.float16)) != ident


# ---- the cache ----------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path):
    return TrtCache(tmp_path / "trt")


def test_store_then_lookup_and_load(cache):
    k, p = key(), parts()
    assert cache.lookup(k) is None and cache.load(k) is None
    entry = cache.store(k, p, b"engine-bytes" * 100)
    assert entry.engine_path.read_bytes() == b"engine-bytes" * 100
    sidecar = json.loads(entry.sidecar_path.read_text())
    assert sidecar["parts"]["width"] == 512 and sidecar["size"] == 1200 and len(sidecar["sha256"]) == 64
    assert cache.lookup(k, expected_parts=p).sha256 == sidecar["sha256"]
    assert cache.load(k) == b"engine-bytes" * 100
    assert not list(cache.root.glob(".tmp-*"))


def test_store_accepts_buffers(cache):
    cache.store(key(), parts(), memoryview(bytearray(b"\x01\x02\x03")))
    assert cache.load(key()) == b"\x01\x02\x03"


def test_store_refuses_a_key_that_is_not_its_parts(cache):
    with pytest.raises(ValueError, match="does not match"):
        cache.store(key(), parts(width=768), b"x")


def _assert_rebuilt_not_loaded(cache, k, caplog, reason):
    with caplog.at_level("WARNING", logger="streamvj.trt_cache"):
        assert cache.load(k) is None
    assert reason in caplog.text
    engine, sidecar = cache.paths(k)
    assert not engine.exists() and not sidecar.exists()  # deleted: the caller rebuilds
    cache.store(k, parts(), b"rebuilt")
    assert cache.load(k) == b"rebuilt"


def test_corrupt_engine_is_deleted_and_rebuilt(cache, caplog):
    k = key()
    entry = cache.store(k, parts(), b"A" * 64)
    entry.engine_path.write_bytes(b"B" * 64)
    _assert_rebuilt_not_loaded(cache, k, caplog, "corrupt")


def test_truncated_engine_is_deleted_and_rebuilt(cache, caplog):
    k = key()
    entry = cache.store(k, parts(), b"A" * 64)
    entry.engine_path.write_bytes(b"A" * 10)
    _assert_rebuilt_not_loaded(cache, k, caplog, "truncated")


@pytest.mark.parametrize("text", ["{not json", "[]", '{"format": 1}', "\xff\xfe"])
def test_unreadable_sidecar_is_deleted_and_rebuilt(cache, caplog, text):
    k = key()
    entry = cache.store(k, parts(), b"A" * 64)
    entry.sidecar_path.write_text(text, encoding="latin-1")
    with caplog.at_level("WARNING", logger="streamvj.trt_cache"):
        assert cache.lookup(k) is None
    assert not entry.engine_path.exists()


def test_stale_parts_are_deleted_and_rebuilt(cache, caplog):
    k = key()
    entry = cache.store(k, parts(), b"A" * 64)
    sidecar = json.loads(entry.sidecar_path.read_text())
    sidecar["parts"]["height"] = 768  # an entry whose recorded parts no longer give its key
    entry.sidecar_path.write_text(json.dumps(sidecar))
    _assert_rebuilt_not_loaded(cache, k, caplog, "stale")


def test_expected_parts_mismatch_is_stale(cache, caplog):
    k = key()
    cache.store(k, parts(), b"A")
    with caplog.at_level("WARNING", logger="streamvj.trt_cache"):
        assert cache.lookup(k, expected_parts=parts(batch=3)) is None
    assert "stale" in caplog.text


def test_other_cache_format_is_rebuilt(cache, caplog):
    k = key()
    entry = cache.store(k, parts(), b"A")
    sidecar = json.loads(entry.sidecar_path.read_text())
    sidecar["format"] = 0
    entry.sidecar_path.write_text(json.dumps(sidecar))
    _assert_rebuilt_not_loaded(cache, k, caplog, "format")


def test_engine_without_sidecar_is_a_miss(cache, caplog):
    """A crash after the engine's os.replace but before the sidecar's: never loaded."""
    k = key()
    engine, _ = cache.paths(k)
    engine.parent.mkdir(parents=True)
    engine.write_bytes(b"half")
    _assert_rebuilt_not_loaded(cache, k, caplog, "incomplete")


def test_write_is_atomic_when_interrupted(cache, monkeypatch):
    """A failure mid-write leaves the previous committed entry intact-or-absent, never half a file."""
    k = key()
    cache.store(k, parts(), b"old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        cache.store(k, parts(), b"new" * 1000)
    monkeypatch.undo()
    assert not list(cache.root.glob(".tmp-*"))  # the temp file was cleaned up
    assert cache.load(k) is None  # the old entry was uncommitted first: a miss, not a mix
    engine, sidecar = cache.paths(k)
    assert not sidecar.exists()


def test_prune_drops_least_recently_used(cache):
    keys = [key(batch=b) for b in (1, 2, 3)]
    for i, k in enumerate(keys):
        cache.store(k, parts(batch=i + 1), b"x" * 100)
        os.utime(cache.paths(k)[0], (1000 + i, 1000 + i))
    stale_tmp = cache.root / ".tmp-leftover"
    stale_tmp.write_bytes(b"partial")
    os.utime(stale_tmp, (time.time() - 3 * 86400,) * 2)
    removed = cache.prune(max_bytes=200, keep={keys[0]})
    assert removed == [keys[1]] and cache.lookup(keys[0]) and cache.lookup(keys[2])
    assert not stale_tmp.exists()


def test_keys_must_be_hex(cache):
    with pytest.raises(ValueError):
        cache.paths("../etc/passwd")
