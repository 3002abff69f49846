"""Command routing: what one OSC message does, looked up by its exact address.

A parameter is shaped and written into the ParamStore (which validates it); a smoothing
time likewise; a command is shaped to its arguments and handed to whoever runs it (the
show for `Target.SHOW`, `run_live` for tempo and transitions). One dict lookup per
message: no pattern matching (address patterns are refused before this).
"""

from __future__ import annotations

from typing import Any

from bridges.control.osc_address import OscAddress, address_table
from bridges.control.osc_args import is_press, shape_args, shape_value
from engine.config.schema import LIVE_SPECS
from engine.live.commands import Command, CommandSink, Target, run_live
from engine.live.params import ParamStore
from engine.live.tempo import Tempo

SOURCE = "osc"


class OscRoutes:
    def __init__(self, prefix: str, store: ParamStore, commands: CommandSink, tempo: Tempo | None) -> None:
        self.store, self.commands, self.tempo = store, commands, tempo
        self.table: dict[str, OscAddress] = {a.path: a for a in address_table(prefix)}

    def get(self, path: str) -> OscAddress | None:
        return self.table.get(path)

    def apply(self, addr: OscAddress, args: tuple[Any, ...]) -> None:
        """Shape and apply one message's arguments; ConfigError says why it was refused."""
        if addr.role == "param":
            self.store.set(addr.name, shape_value(LIVE_SPECS[addr.name].kind, args), source=SOURCE)
        elif addr.role == "smoothing":
            self.store.set_smoothing(addr.name, shape_value("float", args), source=SOURCE)
        else:
            command = addr.command
            assert command is not None  # every "command" row carries its Command
            if command.is_trigger:
                if is_press(args):
                    self.run(command, ())
            else:
                self.run(command, shape_args(command.args, args))

    def run(self, command: Command, args: tuple[Any, ...]) -> None:
        if command.target is Target.SHOW:
            self.commands.on_command(command, args)
        else:
            run_live(command, args, self.store, self.tempo, SOURCE)
