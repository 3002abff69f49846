from __future__ import annotations

import logging

from engine.realtime.log_limit import LogLimiter


def make(caplog, **kwargs):
    now = [0.0]
    limiter = LogLimiter(logging.getLogger("streamvj.test"), clock=lambda: now[0], **kwargs)
    caplog.set_level(logging.INFO, logger="streamvj.test")
    return limiter, now


def test_a_key_is_logged_once_then_again_after_the_period_with_a_count(caplog):
    limiter, now = make(caplog, repeat_s=5.0)
    assert limiter.warning("bad", "bad value") is True
    assert limiter.warning("bad", "bad value") is False
    assert limiter.warning("bad", "bad value") is False
    now[0] = 6.0
    assert limiter.warning("bad", "bad value") is True
    assert [r.getMessage() for r in caplog.records] == ["bad value", "bad value (2 more like this since last logged)"]


def test_the_global_budget_summarises_a_stream_of_distinct_messages(caplog):
    limiter, now = make(caplog, lines_per_s=3.0)
    logged = [limiter.warning(i, f"garbage {i}") for i in range(20)]
    assert sum(logged) == 3
    now[0] = 1.0
    assert limiter.warning("later", "later") is True
    assert "17 other messages suppressed" in caplog.records[-1].getMessage()


def test_log_takes_any_level_and_keys_by_message(caplog):
    limiter, _ = make(caplog)
    assert limiter.log(logging.ERROR, "processor failed") is True
    assert limiter.log(logging.ERROR, "processor failed") is False
    assert caplog.records[-1].levelno == logging.ERROR
