"""Datagram checks: what makes a UDP payload an OSC packet streamvj will parse.

Walks bundles ourselves: python-osc loops forever on a bundle element with a negative
size, and logs to the root logger for unknown type tags. A packet that passes is handed
to python-osc's parser.
"""

from __future__ import annotations

import re

MAX_DATAGRAM = 65536  # socketserver reads 8192 by default: long prompt lists would be cut
_BUNDLE = b"#bundle\x00"
_MAX_NESTING = 8
_TAGS_OK = frozenset("ifdhsbrmtTFN[]")  # what python-osc parses; others it skips with a root-logger warning
# One regex scan per check instead of a Python loop over the address's bytes.
_NOT_PRINTABLE = re.compile(rb"[^\x21-\x7e]")
_PATTERN = re.compile(rb"[*?\[\]{}]")


def check_packet(data: bytes, depth: int = 0) -> str | None:
    """Why a datagram is not an acceptable OSC packet, or None."""
    if data.startswith(_BUNDLE):
        if depth >= _MAX_NESTING:
            return "bundles nested too deep"
        if len(data) < 16:
            return "bundle shorter than its 16-byte header"
        i = 16
        while i < len(data):
            if i + 4 > len(data):
                return "truncated bundle element size"
            size = int.from_bytes(data[i : i + 4], "big", signed=True)
            if size <= 0 or size % 4 or i + 4 + size > len(data):
                return f"bad bundle element size {size}"
            reason = check_packet(data[i + 4 : i + 4 + size], depth + 1)
            if reason:
                return reason
            i += 4 + size
        return None
    if not data.startswith(b"/"):
        return "not an OSC message or bundle"
    end = data.find(b"\x00")
    if end < 0:
        return "address is not NUL-terminated"
    address = data[:end]
    if _NOT_PRINTABLE.search(address):
        return "address is not printable ASCII"
    if _PATTERN.search(address):
        return "address patterns (wildcards) are not supported; send the full address"
    i = (end + 4) & ~3
    if i >= len(data):
        return None if i == len(data) else "truncated after the address"
    if data[i : i + 1] != b",":
        return "type tag string must start with ','"
    tag_end = data.find(b"\x00", i)
    if tag_end < 0:
        return "type tags are not NUL-terminated"
    bad = set(data[i + 1 : tag_end].decode("latin-1")) - _TAGS_OK
    if bad:
        return f"unsupported OSC type tag(s) {''.join(sorted(bad))!r}"
    return None
