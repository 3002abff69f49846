"""engine/errors.py: errors said in one line for logs and status."""

from __future__ import annotations

import pytest

from engine.errors import first_line


@pytest.mark.parametrize(("error", "line"), [
    (ValueError("bad width\n  more detail"), "bad width"),
    (RuntimeError("backend='inductor' raised:\nImportError: x.so: file too short\n\nstack"),
     "backend='inductor' raised: ImportError: x.so: file too short"),  # a header alone says nothing
    (KeyError(), "KeyError"),
    ("\n\n  preset 'x' failed  \n", "preset 'x' failed"),
])
def test_first_line(error, line):
    assert first_line(error) == line
