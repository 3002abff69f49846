"""Control protocols: OSC, OSCQuery, MIDI, and status feedback."""
