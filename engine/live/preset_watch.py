"""Watching the on-air preset's file: an edit saved on disk goes on air without a restart.

Polls the file (portable, and a preset folder is a handful of small files); the first look at
a file records it, a later look that finds different contents calls `reload(name, path)`.
A preset that is not a file in the presets folder (a --preset path) is not watched.

A modification time alone misses edits: FAT and exFAT (a USB stick with the show's presets)
keep mtimes to 2 s and 10 ms, SMB shares can be as coarse, so two saves within one tick
look alike. So a look compares (mtime, size) first and reads the file (at most
MAX_PRESET_BYTES) only when they changed or the mtime is within SETTLE_S of now; it reloads
only when the contents differ, which also skips a save or a cloud sync that rewrote the same
bytes. A file that cannot be read this time (Windows: an editor still holds it while saving)
is looked at again on the next poll, not skipped.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.config.preset_files import MAX_PRESET_BYTES, resolve_preset
from engine.errors import StreamVJError
from engine.realtime.periodic import Periodic

log = logging.getLogger("streamvj.show")

SETTLE_S = 3.0  # FAT's 2 s mtime granularity, plus a clock-skew margin for network shares


def content_digest(path: Path) -> bytes | None:
    """A digest of the file's bytes, or None when it cannot be read right now."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PRESET_BYTES + 1)
    except OSError:  # PermissionError while an editor saves on Windows, or the file just went
        return None
    return hashlib.blake2b(data, digest_size=16).digest()


@dataclass(frozen=True)
class _Seen:
    path: Path
    stamp: tuple[int, int]  # (st_mtime_ns, st_size)
    digest: bytes | None


class PresetWatch:
    def __init__(
        self,
        presets_dir: str | Path,
        on_air: Callable[[], str],
        reload: Callable[[str, Path], None],
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.time,  # compared with file mtimes: wall-clock time
    ) -> None:
        self.presets_dir = Path(presets_dir)
        self.on_air, self.reload = on_air, reload
        self._clock = clock
        self._seen: _Seen | None = None
        self._poller = Periodic("streamvj-preset-watch", interval_s, self.check)

    def check(self) -> bool:
        """Reload the on-air preset when its contents changed since the last look; True when it did."""
        name = self.on_air()
        try:
            path = resolve_preset(self.presets_dir, name)
            st = path.stat()
        except (StreamVJError, OSError):
            return False  # not a file in the folder: nothing to watch
        stamp = (st.st_mtime_ns, st.st_size)
        seen = self._seen
        if seen is None or seen.path != path:
            self._seen = _Seen(path, stamp, content_digest(path))  # another preset went on air: watch it
            return False
        if stamp == seen.stamp and seen.digest is not None and abs(self._clock() - st.st_mtime) >= SETTLE_S:
            return False  # untouched, and too old for an edit to hide within its mtime tick
        digest = content_digest(path)
        if digest is None:
            return False  # unreadable this time: the next look tries again
        self._seen = _Seen(path, stamp, digest)
        if digest == seen.digest:
            return False
        if seen.digest is None:
            return False  # the first readable look: nothing earlier to compare with
        log.info("preset %s changed on disk: reloading", name)
        self.reload(name, path)
        return True

    def start(self) -> PresetWatch:
        self._poller.start()
        return self

    def stop(self) -> None:
        self._poller.stop()
