"""Where `sidecar sandbox` listens; kept apart so the CLI can read it without the sandbox."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Ports:
    """0 means any free port."""

    proxy: int = 8080
    admin: int = 9090
    idp: int = 8443
    api: int = 8444
    kisc: int = 8243
    passport: int = 8445
    registration: int = 8446
    mpt: int = 8447
    xtrace: int = 8448
