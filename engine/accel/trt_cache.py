"""On-disk cache of TensorRT engines, keyed by everything an engine depends on.

An engine is only valid for the exact model weights, component, input shapes (resolution
and batch), dtype, TensorRT version and GPU it was built for. The reference
StreamDiffusion keyed its engines without the resolution, so a size change loaded an
engine of the wrong shape ("binding dimension exceeds"). Here every one of those is part
of the key, and a cached entry is checked before it is handed out:

    <root>/<key>.engine   the serialized engine
    <root>/<key>.json     sidecar: format, key, key parts, engine size and sha256

The sidecar is written last and is the commit marker: an engine without one (a crash
mid-store) is a miss. Both files go through a temp file + `os.replace`, so a reader never
sees half a file. Any entry that fails a check (stale parts, size or hash mismatch,
unreadable JSON) is deleted and reported as a miss, so the caller rebuilds it instead of
loading something that could crash TensorRT or render garbage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.accel.cache_folder import cache_folder

log = logging.getLogger("streamvj.trt_cache")

CACHE_FORMAT = 1
ENV_CACHE_DIR = "STREAMVJ_TRT_CACHE"
KEY_HEX_CHARS = 32  # 128 bits of sha256: collisions are not a practical concern for a local cache
_SAMPLES_PER_TENSOR = 1024
_HASH_CHUNK = 16 << 20
_STALE_TEMP_S = 24 * 3600.0  # a temp file this old belongs to no live build


def default_cache_dir() -> Path:
    """$STREAMVJ_TRT_CACHE, else $XDG_CACHE_HOME/streamvj/trt, else ~/.cache/streamvj/trt."""
    return cache_folder(ENV_CACHE_DIR, "trt")


# ---- keys ---------------------------------------------------------------------------------------


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def engine_key_parts(model_identity: str, component: str, width: int, height: int, batch: int,
                     dtype: torch.dtype | str, trt_version: str, gpu_name: str,
                     extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-able dict a key is the hash of (also stored in the sidecar, for humans and checks)."""
    for name, value in (("width", width), ("height", height), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return {
        "format": CACHE_FORMAT,
        "model": str(model_identity),
        "component": str(component),
        "width": width,
        "height": height,
        "batch": batch,
        "dtype": str(dtype).replace("torch.", ""),
        "trt_version": str(trt_version),
        "gpu": str(gpu_name),
        "extra": json.loads(_canonical(dict(extra or {}))),
    }


def key_from_parts(parts: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical(parts).encode()).hexdigest()[:KEY_HEX_CHARS]


def engine_cache_key(model_identity: str, component: str, width: int, height: int, batch: int,
                     dtype: torch.dtype | str, trt_version: str, gpu_name: str,
                     extra: Mapping[str, Any] | None = None) -> str:
    """Stable hex key: the same inputs give the same key in every process and on every machine."""
    return key_from_parts(engine_key_parts(model_identity, component, width, height, batch, dtype, trt_version,
                                           gpu_name, extra))


# ---- model identity -----------------------------------------------------------------------------

_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _config_of(module: torch.nn.Module) -> Any:
    config = getattr(module, "config", None)
    if config is None:
        return None
    if hasattr(config, "to_dict"):  # transformers configs
        config = config.to_dict()
    return {k: v for k, v in dict(config).items() if not str(k).startswith("_")}  # drops _name_or_path etc.


@torch.no_grad()
def model_identity(module: torch.nn.Module) -> str:
    """A hex fingerprint of a module's class, config and weights, cheap enough for every startup.

    Hashing every weight byte (sha256 over a 1.7 GB fp16 UNet) costs ~1-2 s of CPU, and on
    a GPU it first copies the GBs back to the host. Instead, per tensor (on its own device):

    * name, shape, dtype;
    * an exact integer checksum: the bits reinterpreted as integers and summed (mod 2^64).
      Integer addition is exact and order-free, so CPU and GPU agree bit for bit, and any
      change of any single element changes it (short of a deliberately compensating edit);
    * a strided sample of up to 1024 elements' raw bytes, which makes it position-sensitive
      (a sum alone would not see two elements swapped).

    The weights are read once at memory bandwidth (milliseconds on a GPU, ~0.3 s/GB on a
    CPU) and two small tensors cross to the host. It is a cache key, not a security
    check: a crafted collision is possible, an accidental one is not. The engine files
    themselves are verified with sha256 by `TrtCache`.
    """
    tensors = list(module.state_dict(keep_vars=False).items())
    meta = []
    sums = []
    samples = []
    for name, tensor in tensors:
        meta.append([name, list(tensor.shape), str(tensor.dtype)])
        if tensor.numel() == 0:
            continue
        ints = tensor.detach()
        if ints.dtype == torch.bool:
            ints = ints.view(torch.uint8)
        elif ints.is_floating_point() or ints.is_complex():
            int_dtype = _INT_VIEW.get(ints.element_size())
            if int_dtype is None:
                raise TypeError(f"model_identity: cannot fingerprint {name} of dtype {ints.dtype}")
            ints = ints.view(int_dtype)  # same bits, as integers: exact sums on any device
        sums.append(ints.sum(dtype=torch.int64).reshape(1))
        count = min(_SAMPLES_PER_TENSOR, ints.numel())
        # Integer index math (not linspace) so every device picks the same elements; torch.take
        # reads the logical row-major order, so a channels_last copy samples identically.
        index = torch.arange(count, device=ints.device) * (ints.numel() - 1) // max(count - 1, 1)
        samples.append(torch.take(ints, index).to(torch.int64))
    digest = hashlib.sha256()
    digest.update(type(module).__name__.encode())
    digest.update(_canonical(_config_of(module)).encode())
    digest.update(_canonical(meta).encode())
    if sums:
        digest.update(torch.cat(sums).cpu().numpy().tobytes())
        digest.update(torch.cat(samples).cpu().numpy().tobytes())
    return digest.hexdigest()[:KEY_HEX_CHARS]


# ---- the cache ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheEntry:
    key: str
    engine_path: Path
    sidecar_path: Path
    parts: dict
    size: int
    sha256: str


def _atomic_write(path: Path, data: bytes | memoryview) -> None:
    """Write to a temp file in the same folder, fsync, then os.replace: all or nothing."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sha256_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class TrtCache:
    """Engines on disk under `root` (default: `default_cache_dir()`)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def paths(self, key: str) -> tuple[Path, Path]:
        if not key or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"cache key must be lowercase hex, got {key!r}")
        return self.root / f"{key}.engine", self.root / f"{key}.json"

    def _discard(self, key: str, reason: str) -> None:
        log.warning("TensorRT cache entry %s is %s: deleting it, the engine will be rebuilt", key, reason)
        for path in self.paths(key):
            path.unlink(missing_ok=True)

    def _read_sidecar(self, key: str, expected_parts: Mapping[str, Any] | None) -> dict | None:
        engine_path, sidecar_path = self.paths(key)
        if not sidecar_path.exists():
            if engine_path.exists():
                self._discard(key, "incomplete (engine without sidecar)")
            return None
        try:
            sidecar = json.loads(sidecar_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._discard(key, f"unreadable ({exc})")
            return None
        problem = None
        if not isinstance(sidecar, dict) or not all(k in sidecar for k in ("format", "key", "parts", "size", "sha256")):
            problem = "malformed (sidecar fields missing)"
        elif sidecar["format"] != CACHE_FORMAT:
            problem = f"from cache format {sidecar['format']} (this is {CACHE_FORMAT})"
        elif sidecar["key"] != key or not isinstance(sidecar["parts"], dict) or key_from_parts(sidecar["parts"]) != key:
            problem = "stale (its key parts do not hash to its key)"
        elif expected_parts is not None and _canonical(sidecar["parts"]) != _canonical(expected_parts):
            problem = "stale (built for other key parts)"
        elif not engine_path.exists():
            problem = "incomplete (engine file missing)"
        if problem:
            self._discard(key, problem)
            return None
        return sidecar

    def lookup(self, key: str, expected_parts: Mapping[str, Any] | None = None) -> CacheEntry | None:
        """The verified entry for `key`, or None (a miss; a bad entry is deleted first).

        Verifying means hashing the whole engine file (about 1 s per GB): the price of never
        handing TensorRT a truncated or corrupted engine. Use `load` when the bytes are
        needed anyway, so the file is read once.
        """
        found = self._verified(key, expected_parts, keep_bytes=False)
        return None if found is None else found[0]

    def load(self, key: str, expected_parts: Mapping[str, Any] | None = None) -> bytes | None:
        """The verified engine bytes for `key` (read once, hashed in memory), or None."""
        found = self._verified(key, expected_parts, keep_bytes=True)
        return None if found is None else found[1]

    def _verified(self, key: str, expected_parts: Mapping[str, Any] | None,
                  keep_bytes: bool) -> tuple[CacheEntry, bytes | None] | None:
        sidecar = self._read_sidecar(key, expected_parts)
        if sidecar is None:
            return None
        engine_path, sidecar_path = self.paths(key)
        data = None
        try:
            if keep_bytes:
                data = engine_path.read_bytes()
                sha, size = hashlib.sha256(data).hexdigest(), len(data)
            else:
                sha, size = _sha256_file(engine_path)
        except OSError as exc:
            self._discard(key, f"unreadable ({exc})")
            return None
        if size != sidecar["size"]:
            self._discard(key, f"truncated ({size} bytes, expected {sidecar['size']})")
            return None
        if sha != sidecar["sha256"]:
            self._discard(key, "corrupt (sha256 mismatch)")
            return None
        try:
            now = time.time()
            os.utime(engine_path, (now, now))  # recency for `prune`
        except OSError as exc:  # a read-only cache still serves its engines
            log.debug("cannot mark %s as used: %s", engine_path, exc)
        entry = CacheEntry(key, engine_path, sidecar_path, sidecar["parts"], size, sha)
        return entry, data

    def store(self, key: str, parts: Mapping[str, Any], engine: bytes | bytearray | memoryview) -> CacheEntry:
        """Save an engine atomically (engine first, then the sidecar that commits it)."""
        if key_from_parts(parts) != key:
            raise ValueError("store: key does not match its parts (compute both with engine_key_parts)")
        engine_path, sidecar_path = self.paths(key)
        self.root.mkdir(parents=True, exist_ok=True)
        view = memoryview(engine).cast("B")
        sha = hashlib.sha256(view).hexdigest()
        sidecar_path.unlink(missing_ok=True)  # uncommit any previous entry before its engine changes
        _atomic_write(engine_path, view)
        sidecar = {"format": CACHE_FORMAT, "key": key, "parts": dict(parts), "size": view.nbytes, "sha256": sha,
                   "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _atomic_write(sidecar_path, json.dumps(sidecar, indent=2, sort_keys=True, default=str).encode())
        log.info("cached TensorRT engine %s (%s, %.1f MB) in %s", key, parts.get("component", "?"),
                 view.nbytes / 1e6, self.root)
        return CacheEntry(key, engine_path, sidecar_path, json.loads(_canonical(parts)), view.nbytes, sha)

    def entries(self) -> list[tuple[str, int, float]]:
        """(key, engine bytes, last use time) of every committed entry, unverified."""
        found = []
        if not self.root.is_dir():
            return found
        for sidecar in self.root.glob("*.json"):
            engine = sidecar.with_suffix(".engine")
            if engine.exists():
                stat = engine.stat()
                found.append((sidecar.stem, stat.st_size, stat.st_mtime))
        return found

    def prune(self, max_bytes: int, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Delete least recently used entries (never those in `keep`) until the total is <= max_bytes.

        Every rebuilt UNet engine is ~1-2 GB, so without this a cache grows by one engine per
        model/size/GPU/TensorRT change. Also removes leftovers of crashed stores.
        """
        self._remove_stale_temps()
        removed = []
        entries = sorted(self.entries(), key=lambda e: e[2])
        total = sum(size for _, size, _ in entries)
        for key, size, _ in entries:
            if total <= max_bytes:
                break
            if key in keep:
                continue
            for path in self.paths(key):
                path.unlink(missing_ok=True)
            total -= size
            removed.append(key)
            log.info("pruned TensorRT cache entry %s (%.1f MB)", key, size / 1e6)
        return removed

    def _remove_stale_temps(self) -> None:
        if not self.root.is_dir():
            return
        cutoff = time.time() - _STALE_TEMP_S
        for tmp in self.root.glob(".tmp-*"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
            except FileNotFoundError:
                continue  # another process finished or removed it meanwhile
