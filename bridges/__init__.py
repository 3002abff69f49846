"""Bridges: everything that talks to the outside (frames in/out, OSC, MIDI). Imports engine/, never the reverse."""
