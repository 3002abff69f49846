"""engine/accel/compile_cache.py: where the compile caches live, that a restart reuses them, and the progress lines."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from engine.accel import compile_cache


@pytest.fixture
def fresh(monkeypatch):
    """The module as in a new process: nothing enabled yet, no cache variables set."""
    monkeypatch.setattr(compile_cache, "_enabled", None)
    for name in (compile_cache.ENV_CACHE_DIR, compile_cache.TORCH_ENV, "XDG_CACHE_HOME"):
        monkeypatch.setenv(name, "x")  # recorded first, so enable_compile_cache's own setting is undone too
        monkeypatch.delenv(name)
    return monkeypatch


def test_folder_rule_matches_the_tensorrt_cache(fresh, tmp_path):
    from engine.accel.trt_cache import default_cache_dir as trt_dir

    assert compile_cache.default_cache_dir() == Path("~/.cache/streamvj/inductor").expanduser()
    fresh.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.default_cache_dir() == tmp_path / "streamvj" / "inductor"
    assert compile_cache.default_cache_dir().parent == trt_dir().parent  # one streamvj cache folder
    fresh.setenv(compile_cache.ENV_CACHE_DIR, str(tmp_path / "mine"))
    assert compile_cache.default_cache_dir() == tmp_path / "mine"


def test_enable_points_inductor_at_the_folder_once(fresh, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    fresh.setenv(compile_cache.ENV_CACHE_DIR, str(tmp_path / "a"))
    assert compile_cache.enable_compile_cache() == tmp_path / "a"
    assert cache_dir() == str(tmp_path / "a") and (tmp_path / "a").is_dir()
    assert torch._inductor.config.fx_graph_cache is True
    assert compile_cache.enable_compile_cache(tmp_path / "b") == tmp_path / "a"  # the first call decides


def test_a_users_torch_cache_wins_but_torchs_own_default_does_not(fresh, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir as torch_default

    fresh.setenv(compile_cache.TORCH_ENV, torch_default())  # what importing transformers leaves there
    fresh.setenv(compile_cache.ENV_CACHE_DIR, str(tmp_path / "ours"))
    assert compile_cache.enable_compile_cache() == tmp_path / "ours"
    fresh.setattr(compile_cache, "_enabled", None)
    fresh.setenv(compile_cache.TORCH_ENV, str(tmp_path / "theirs"))
    assert compile_cache.enable_compile_cache() == tmp_path / "theirs"


def test_ready_line_says_whether_the_cache_answered():
    before = {"hits": 2, "misses": 1}
    assert compile_cache.describe_compile("0/0", 3.04, before, {"hits": 3, "misses": 1}) == (
        "torch.compile: graph 0/0 ready in 3.0 s, from the cache")
    assert compile_cache.describe_compile("1/0", 61.0, before, {"hits": 2, "misses": 3}) == (
        "torch.compile: graph 1/0 ready in 61.0 s, compiled (2 new graphs, 0 from the cache)")
    assert "traced (no inductor graph)" in compile_cache.describe_compile("2/0", 0.1, before, before)


def test_progress_lines_bracket_each_compile(monkeypatch, caplog):
    counts = iter([{"hits": 0, "misses": 0}, {"hits": 0, "misses": 1}])
    monkeypatch.setattr(compile_cache, "cache_counts", lambda: next(counts))
    progress = compile_cache._CompileLog()
    with caplog.at_level(logging.INFO, logger="streamvj.compile"):
        progress.start(SimpleNamespace(compile_id="0/0"))
        progress.end(SimpleNamespace(compile_id="0/0"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("torch.compile: compiling graph 0/0")
    assert lines[1].startswith("torch.compile: graph 0/0 ready in ") and lines[1].endswith("compiled (1 new graph, 0 from the cache)")


@pytest.mark.compile
def test_a_restart_loads_the_compiled_graph_from_the_folder(fresh, tmp_path, caplog):
    """Compile, forget everything in memory (as a new process would), compile again: the cache answers."""
    from torch._inductor.utils import clear_caches

    fresh.setenv(compile_cache.ENV_CACHE_DIR, str(tmp_path / "cache"))
    compile_cache.enable_compile_cache()

    def step(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x * 3.0 + 1.0).mean(dim=1)

    x = torch.randn(4, 8)
    with caplog.at_level(logging.INFO, logger="streamvj.compile"):
        for _ in range(2):
            torch._dynamo.reset()
            clear_caches()  # inductor's in-memory copies: only the folder is left
            compile_cache.log_compiles()  # a reset drops dynamo's callbacks; a new process has none yet
            torch.testing.assert_close(torch.compile(step, dynamic=False)(x), step(x))
    ready = [r.getMessage() for r in caplog.records if " ready in " in r.getMessage()]
    assert len(ready) == 2, ready
    assert "compiled (1 new graph" in ready[0] and ready[1].endswith("from the cache")
    assert any(os.scandir(tmp_path / "cache"))


_COMPILE_ONCE = """
import json, logging, sys, torch
from engine.accel.backend import FrameStep
records = []
logging.basicConfig(level=logging.WARNING)
logging.getLogger("streamvj.backend").addHandler(type("H", (logging.Handler,), {"emit": lambda h, r: records.append(r.getMessage())})())
x = torch.arange(32, dtype=torch.float32).view(4, 8) / 7.0
step = lambda t: torch.tanh(t * 5.0 - 1.0).sum(dim=1)
frame_step = FrameStep(step, "compile", device="cpu", static_inputs=[x])
same = torch.allclose(frame_step.run(x), step(x))
print(json.dumps({"error": frame_step.compile_error, "same": same, "warnings": records}))
"""


def _compile_in_a_new_process(cache: Path) -> dict:
    import json
    import subprocess
    import sys

    from tests.paths import REPO

    env = {**os.environ, compile_cache.ENV_CACHE_DIR: str(cache)}
    env.pop(compile_cache.TORCH_ENV, None)
    proc = subprocess.run([sys.executable, "-c", _COMPILE_ONCE], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.compile
def test_a_truncated_module_left_in_the_cache_is_removed_and_compiled_again(tmp_path):
    """An engine killed mid-link leaves an empty or short .so in the cache, which inductor would fail to
    load on every later start (compile lost for good). The frame step removes it and compiles once more."""
    cache = tmp_path / "cache"
    first = _compile_in_a_new_process(cache)
    assert first["error"] is None and first["same"] and not first["warnings"]
    modules = list(cache.rglob("*.main.so"))  # the graph's kernels (not the CPU-feature probes beside them)
    assert modules, "the compile left no module in the cache"
    for module in modules:
        module.write_bytes(b"")  # what a link cut short leaves
    second = _compile_in_a_new_process(cache)
    assert second["error"] is None and second["same"], second
    assert any("cannot be loaded" in w and "removed, compiling it again" in w for w in second["warnings"]), second
    assert all(m.stat().st_size > 0 for m in modules if m.exists())
