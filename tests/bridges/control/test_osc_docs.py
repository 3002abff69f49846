from __future__ import annotations

from bridges.control.osc_address import address_table
from bridges.control.osc_docs import osc_markdown
from engine.live.commands import Command
from tests.paths import REPO as ROOT


def test_docs_osc_md_is_generated_and_current() -> None:
    assert (ROOT / "docs" / "osc.md").read_text() == osc_markdown()
    text = osc_markdown()
    for addr in address_table():
        assert f"`{addr.path}`" in text


def test_commands_document_their_arguments_and_ranges() -> None:
    rows = {line.split(" | ")[0].strip("| `"): line for line in osc_markdown().splitlines() if "`/" in line}
    bpm = rows[f"/streamvj/{Command.TEMPO_BPM.address}"]
    assert "bpm: float" in bpm and "bpm: 20 … 300" in bpm
    beats = rows[f"/streamvj/{Command.PROMPT_TRANSITION_BEATS.address}"]
    assert "[quantum: string]" in beats and "quantum: beat \\| bar" in beats
    assert "none, or a button value" in rows[f"/streamvj/{Command.PAUSE.address}"]
