from __future__ import annotations

import os
from pathlib import Path

from engine.live import preset_watch
from engine.live.preset_watch import PresetWatch

PRESET = "name: {name}\nload: {{model: tiny}}\nlive: {{guidance_scale: {g}}}\n"


def write(folder: Path, name: str, g: float = 1.0, bump_s: float = 0.0) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(PRESET.format(name=name, g=g))
    if bump_s:
        # Move the mtime on explicitly: two writes within the filesystem's timestamp granularity look equal.
        st = path.stat()
        os.utime(path, (st.st_atime, st.st_mtime + bump_s))
    return path


def test_an_edit_of_the_on_air_preset_reloads_it(tmp_path: Path) -> None:
    write(tmp_path, "alpha")
    on_air = ["alpha"]
    reloads: list[tuple[str, Path]] = []
    watch = PresetWatch(tmp_path, lambda: on_air[0], lambda name, path: reloads.append((name, path)))
    assert watch.check() is False  # the first look records the file
    assert watch.check() is False and reloads == []
    path = write(tmp_path, "alpha", g=3.5, bump_s=5)
    assert watch.check() is True
    assert reloads == [("alpha", path.resolve())]
    assert watch.check() is False  # seen now


def test_another_preset_on_air_is_watched_from_its_current_state(tmp_path: Path) -> None:
    write(tmp_path, "alpha")
    write(tmp_path, "beta")
    on_air = ["alpha"]
    reloads: list[str] = []
    watch = PresetWatch(tmp_path, lambda: on_air[0], lambda name, path: reloads.append(name))
    watch.check()
    write(tmp_path, "beta", bump_s=5)  # edited before it went on air: nothing to reload
    on_air[0] = "beta"
    assert watch.check() is False
    write(tmp_path, "beta", g=2.0, bump_s=10)
    assert watch.check() is True and reloads == ["beta"]


def test_a_preset_outside_the_folder_is_not_watched(tmp_path: Path) -> None:
    reloads: list[str] = []
    watch = PresetWatch(tmp_path, lambda: "../elsewhere", lambda name, path: reloads.append(name))
    assert watch.check() is False and watch.check() is False and reloads == []


def test_the_thread_starts_and_stops(tmp_path: Path) -> None:
    import threading

    write(tmp_path, "alpha")
    seen = threading.Event()
    watch = PresetWatch(tmp_path, lambda: (seen.set(), "alpha")[1], lambda name, path: None, interval_s=0.01)
    watch.start()
    try:
        assert seen.wait(30)
    finally:
        watch.stop()
    assert not [t for t in threading.enumerate() if t.name == "streamvj-preset-watch"]


def pin_mtime(path: Path, mtime_ns: int) -> None:
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_an_edit_within_one_mtime_tick_is_seen(tmp_path: Path) -> None:
    """FAT keeps mtimes to 2 s: a second save within that tick leaves mtime (and here the size)
    unchanged. A recently modified file is compared by content."""
    path = write(tmp_path, "alpha", g=1.0)
    tick = path.stat().st_mtime_ns
    reloads: list[str] = []
    now = [tick / 1e9 + 0.5]
    watch = PresetWatch(tmp_path, lambda: "alpha", lambda name, p: reloads.append(name), clock=lambda: now[0])
    assert watch.check() is False
    write(tmp_path, "alpha", g=2.0)  # same length, other contents
    pin_mtime(path, tick)
    assert watch.check() is True and reloads == ["alpha"]
    assert watch.check() is False  # the same contents again


def test_rewriting_the_same_bytes_does_not_reload(tmp_path: Path) -> None:
    """An editor's save without changes, or a cloud folder syncing the file back, moves the mtime only."""
    write(tmp_path, "alpha")
    reloads: list[str] = []
    watch = PresetWatch(tmp_path, lambda: "alpha", lambda name, p: reloads.append(name))
    watch.check()
    write(tmp_path, "alpha", bump_s=7)
    assert watch.check() is False and reloads == []


def test_an_old_untouched_file_is_not_read_on_every_look(tmp_path: Path, monkeypatch) -> None:
    path = write(tmp_path, "alpha")
    reads: list[Path] = []
    real = preset_watch.content_digest
    monkeypatch.setattr(preset_watch, "content_digest", lambda p: reads.append(p) or real(p))
    watch = PresetWatch(tmp_path, lambda: "alpha", lambda name, p: None,
                        clock=lambda: path.stat().st_mtime + preset_watch.SETTLE_S + 60)
    for _ in range(5):
        assert watch.check() is False
    assert len(reads) == 1  # the first look only


def test_a_file_locked_while_saving_is_looked_at_again(tmp_path: Path, monkeypatch) -> None:
    """On Windows an editor can hold the file while it saves: that look reads nothing, the next one does."""
    write(tmp_path, "alpha")
    reloads: list[str] = []
    watch = PresetWatch(tmp_path, lambda: "alpha", lambda name, p: reloads.append(name))
    watch.check()
    write(tmp_path, "alpha", g=4.0, bump_s=9)
    real = preset_watch.content_digest
    monkeypatch.setattr(preset_watch, "content_digest", lambda p: None)  # a sharing violation
    assert watch.check() is False and reloads == []
    monkeypatch.setattr(preset_watch, "content_digest", real)
    assert watch.check() is True and reloads == ["alpha"]
