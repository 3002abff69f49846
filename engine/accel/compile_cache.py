"""torch.compile's caches in one known, persistent folder, and a log line for each graph it compiles.

A restart mid-show must not recompile for minutes. Inductor can reuse what it compiled
before (its FX graph cache, AOTAutograd's cache, and the Triton / C++ kernels under them),
but by default they live in /tmp/torchinductor_<user>: wiped by a reboot on most systems,
and shared by every torch program of that user. streamvj points them at its own folder
beside the TensorRT engines (engine/accel/trt_cache.py uses the same rule):

    $STREAMVJ_COMPILE_CACHE, else $XDG_CACHE_HOME/streamvj/inductor, else ~/.cache/streamvj/inductor

Each entry is keyed by inductor itself (graph, shapes, dtypes, torch version, device), so
one folder serves every preset and size; a changed graph is a miss, never a wrong hit.
A TORCHINDUCTOR_CACHE_DIR set by the user wins (it is theirs to choose); the value inductor
writes there itself on import (its /tmp default) does not.

`enable_compile_cache` must run before the first compile: inductor reads the folder when
it first needs it. `log_compiles` prints what dynamo compiles while it happens, so a VJ
watching a 60 s pause sees why (and, on a warm start, that the cache answered).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from pathlib import Path

from engine.accel.cache_folder import cache_folder

log = logging.getLogger("streamvj.compile")

ENV_CACHE_DIR = "STREAMVJ_COMPILE_CACHE"
TORCH_ENV = "TORCHINDUCTOR_CACHE_DIR"
_lock = threading.Lock()
_enabled: Path | None = None
_progress: _CompileLog | None = None


def default_cache_dir() -> Path:
    """$STREAMVJ_COMPILE_CACHE, else $XDG_CACHE_HOME/streamvj/inductor, else ~/.cache/streamvj/inductor."""
    return cache_folder(ENV_CACHE_DIR, "inductor")


def enable_compile_cache(folder: Path | None = None) -> Path:
    """Point inductor's caches at `folder` (default_cache_dir()) and switch them on; returns the folder used.

    Idempotent: the first call in a process decides (inductor keeps the folder it first read)."""
    global _enabled
    with _lock:
        if _enabled is not None:
            return _enabled
        chosen = _users_torch_cache()
        path = Path(chosen).expanduser() if chosen else (folder or default_cache_dir())
        path.mkdir(parents=True, exist_ok=True)
        os.environ[TORCH_ENV] = str(path)  # inductor's cache_dir(); Triton's kernels go under it (triton/)
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config

        # On by default in recent torch, not in every torch >= 2.4 that streamvj accepts.
        inductor_config.fx_graph_cache = True
        if hasattr(functorch_config, "enable_autograd_cache"):
            functorch_config.enable_autograd_cache = True
        _enabled = path
        log.info("torch.compile cache: %s%s", path, f" (from ${TORCH_ENV})" if chosen else "")
        return path


def _users_torch_cache() -> str | None:
    """TORCHINDUCTOR_CACHE_DIR when the user set it. Importing transformers or accelerate already
    makes inductor write its own default there (/tmp/torchinductor_<user>): that one is not a choice."""
    value = os.environ.get(TORCH_ENV)
    if not value:
        return None
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as torch_default

    return None if os.path.abspath(value) == os.path.abspath(torch_default()) else value


def cache_counts() -> dict[str, int]:
    """Inductor's FX graph cache hits and misses so far in this process."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return {"hits": int(inductor["fxgraph_cache_hit"]), "misses": int(inductor["fxgraph_cache_miss"])}


def describe_compile(compile_id: str, seconds: float, before: dict[str, int], after: dict[str, int]) -> str:
    """The line logged when a graph is ready: how long, and whether the cache answered."""
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    if hits and not misses:
        source = "from the cache"
    elif misses:
        source = f"compiled ({misses} new graph{'s' if misses != 1 else ''}, {hits} from the cache)"
    else:
        source = "traced (no inductor graph)"
    return f"torch.compile: graph {compile_id} ready in {seconds:.1f} s, {source}"


class _CompileLog:
    """Dynamo's compile start/end callbacks as log lines (they run on the compiling thread)."""

    def __init__(self) -> None:
        self.started: dict[str, tuple[float, dict[str, int]]] = {}

    def start(self, args) -> None:
        self.started[args.compile_id] = (time.perf_counter(), cache_counts())
        log.info("torch.compile: compiling graph %s (a new shape or mode; minutes cold, seconds from the cache)...",
                 args.compile_id)

    def end(self, args) -> None:
        began = self.started.pop(args.compile_id, None)
        if began is not None:
            log.info("%s", describe_compile(args.compile_id, time.perf_counter() - began[0], began[1], cache_counts()))


def log_compiles() -> None:
    """Log a line when dynamo starts compiling a graph and one when it is ready.

    Registered once; again after torch._dynamo.reset(), which drops every callback."""
    global _progress
    with _lock:
        import torch._dynamo

        handler = getattr(torch._dynamo, "callback_handler", None)
        if handler is None:  # older torch: compiles still work, silently
            return
        if _progress is None:
            _progress = _CompileLog()
        if _progress.start not in handler.start_callbacks:
            handler.register_start_callback(_progress.start)
            handler.register_end_callback(_progress.end)


# A path in an error message: inductor names the module it could not load (".../xy.main.so: file too short").
_LOADED_PATH = re.compile(r"(/[^\s:'\"]+\.(?:so|pyd|dll))")


def broken_cache_entry(exc: BaseException) -> Path | None:
    """The compiled module in streamvj's compile cache that `exc` (a failed torch.compile) could not load.

    A compile cut short (the engine killed mid-link: a power cut, a SIGKILL during warm-up) can
    leave a truncated or empty .so in the cache. Inductor finds the file, does not rebuild it,
    and every later start fails to load it ("file too short"): compile is lost for good, not
    once. Only files inside the folder `enable_compile_cache` chose are named, never others."""
    root = _enabled
    if root is None:
        return None
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for found in _LOADED_PATH.findall(str(exc)):
            path = Path(found)
            try:
                inside = path.resolve().is_relative_to(root.resolve())
            except OSError:
                continue
            if inside and path.is_file():
                return path
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None
