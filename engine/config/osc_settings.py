"""A preset's `osc:` section: where the OSC server listens, whom it accepts, where status goes."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, Strict, field_validator

from engine.config.scalars import Int, StrictModel


class HostPort(StrictModel):
    host: Annotated[str, Strict(), Field(min_length=1, max_length=255)] = "127.0.0.1"
    port: Int = Field(ge=1, le=65535)


class OscSettings(StrictModel):
    host: Annotated[str, Strict(), Field(min_length=1, max_length=255)] = Field(
        "127.0.0.1", description="Address to bind; 0.0.0.0 listens on every interface"
    )
    port: Int = Field(9000, ge=0, le=65535, description="UDP port (0 = any free port)")
    prefix: Annotated[str, Strict(), Field(pattern=r"^(/[a-z0-9_]+)+$")] = "/streamvj"
    allow: list[Annotated[str, Strict()]] | None = Field(
        None, description="Sender IPs accepted; absent = any sender that can reach the bound address"
    )
    feedback: HostPort | None = Field(None, description="Where status (fps, state, errors) is sent")
    query_port: Int | None = Field(None, ge=0, le=65535, description="OSCQuery HTTP port; absent = off")

    @field_validator("allow")
    @classmethod
    def _ips(cls, v: list[str] | None) -> list[str] | None:
        import ipaddress

        for ip in v or []:
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                raise ValueError(f"{ip!r} is not an IP address") from None
        return v
