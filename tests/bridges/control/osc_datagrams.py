"""Known OSC datagrams as byte constants (OSC 1.0 spec), shared by the OSC tests."""

from __future__ import annotations

import struct

# Address and strings are NUL-terminated and padded to 4 bytes; ints/floats big-endian 32-bit.
GUIDANCE_2_5 = b"/streamvj/guidance_scale\x00\x00\x00\x00" + b",f\x00\x00" + b"\x40\x20\x00\x00"
SEED_42 = b"/streamvj/seed\x00\x00" + b",i\x00\x00" + b"\x00\x00\x00\x2a"
PROMPT_HI = b"/streamvj/prompt\x00\x00\x00\x00" + b",s\x00\x00" + b"hi\x00\x00"
SIMILARITY_ON = b"/streamvj/similarity_enabled\x00\x00\x00\x00" + b",T\x00\x00"
T_INDEX_10_20 = b"/streamvj/t_index_list\x00\x00" + b",ii\x00" + b"\x00\x00\x00\x0a" + b"\x00\x00\x00\x14"
PAUSE_NO_ARGS = b"/streamvj/pause\x00" + b",\x00\x00\x00"
# Bundle: "#bundle", time tag 1 (= immediately), then (int32 size, element) pairs.
BUNDLE_SEED_AND_PROMPT = (
    b"#bundle\x00"
    + b"\x00\x00\x00\x00\x00\x00\x00\x01"
    + struct.pack(">i", len(SEED_42))
    + SEED_42
    + struct.pack(">i", len(PROMPT_HI))
    + PROMPT_HI
)
GOOD = [GUIDANCE_2_5, SEED_42, PROMPT_HI, SIMILARITY_ON, T_INDEX_10_20, BUNDLE_SEED_AND_PROMPT, PAUSE_NO_ARGS]
