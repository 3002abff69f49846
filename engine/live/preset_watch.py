"""Watching the on-air preset's file: an edit saved on disk goes on air without a restart.

Polls the file's mtime (portable, and a preset folder is a handful of small files); the
first look at a file records it, a later different mtime calls `reload(name, path)`.
A preset that is not a file in the presets folder (a --preset path) is not watched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from engine.config.preset_files import resolve_preset
from engine.errors import StreamVJError
from engine.realtime.periodic import Periodic

log = logging.getLogger("streamvj.show")


class PresetWatch:
    def __init__(
        self,
        presets_dir: str | Path,
        on_air: Callable[[], str],
        reload: Callable[[str, Path], None],
        interval_s: float = 1.0,
    ) -> None:
        self.presets_dir = Path(presets_dir)
        self.on_air, self.reload = on_air, reload
        self._seen: tuple[Path, float] | None = None
        self._poller = Periodic("streamvj-preset-watch", interval_s, self.check)

    def check(self) -> bool:
        """Reload the on-air preset when its file changed since the last look; True when it did."""
        name = self.on_air()
        try:
            path = resolve_preset(self.presets_dir, name)
            mtime = path.stat().st_mtime
        except (StreamVJError, OSError):
            return False  # not a file in the folder: nothing to watch
        if self._seen is None or self._seen[0] != path:
            self._seen = (path, mtime)  # another preset went on air: start watching it
            return False
        if mtime == self._seen[1]:
            return False
        self._seen = (path, mtime)
        log.info("preset %s changed on disk: reloading", name)
        self.reload(name, path)
        return True

    def start(self) -> PresetWatch:
        self._poller.start()
        return self

    def stop(self) -> None:
        self._poller.stop()
