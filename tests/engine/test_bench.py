from __future__ import annotations

import numpy as np

from engine.bench import format_table, moving_frames, summarise


def test_moving_frames_are_distinct_opaque_rgba():
    frames = moving_frames(3, 16, 24)
    assert all(f.shape == (16, 24, 4) and f.dtype == np.uint8 and (f[..., 3] == 255).all() for f in frames)
    assert not np.array_equal(frames[0], frames[1])


def test_summary_uses_the_median_and_the_90th_percentile():
    result = summarise([10.0] * 9 + [100.0])
    assert result == {"fps": 100.0, "ms_median": 10.0, "ms_p90": 10.0}
    assert summarise([float(v) for v in range(1, 11)])["ms_p90"] == 9.0


def test_table_lists_each_pipeline():
    table = format_table([("streamvj (none)", {"fps": 50.0, "ms_median": 20.0, "ms_p90": 25.0, "unet_ms_median": 9.0}),
                          ("baseline", {"fps": 30.0, "ms_median": 33.0, "ms_p90": 40.0})])
    assert "streamvj (none)" in table and "baseline" in table and "9.00" in table
