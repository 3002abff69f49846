from __future__ import annotations

import logging

from bridges.control.recent_errors import TEXT_MAX, RecentErrors


def test_keeps_the_newest_warnings_and_errors_of_streamvj() -> None:
    errors = RecentErrors(keep=3).install()
    try:
        log = logging.getLogger("streamvj.show")
        log.info("not kept: below WARNING")
        for i in range(5):
            log.error("preset %r not loaded", f"p{i}")
        logging.getLogger("other").error("not ours")
        version, kept = errors.snapshot()
        assert version == 5
        assert [e["text"] for e in kept] == ["preset 'p2' not loaded", "preset 'p3' not loaded", "preset 'p4' not loaded"]
        assert kept[0]["level"] == "error" and kept[0]["logger"] == "streamvj.show" and kept[0]["t"] > 0
    finally:
        errors.uninstall()
    logging.getLogger("streamvj").error("after uninstall")
    assert errors.snapshot()[0] == 5


def test_long_messages_are_cut_and_bad_formats_kept_raw() -> None:
    errors = RecentErrors()
    errors.emit(logging.LogRecord("streamvj", logging.WARNING, __file__, 1, "x" * 5000, (), None))
    errors.emit(logging.LogRecord("streamvj", logging.WARNING, __file__, 1, "%d items", ("many",), None))
    _, kept = errors.snapshot()
    assert len(kept[0]["text"]) == TEXT_MAX and kept[0]["text"].endswith("…")
    assert kept[1]["text"] == "%d items"
