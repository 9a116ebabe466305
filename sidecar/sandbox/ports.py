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


# What listens on each port, for ``sidecar sandbox --help`` and the banner.
ROLES: dict[str, str] = {
    "proxy": "the sidecar's proxy (HTTP_PROXY for your app)",
    "admin": "the sidecar's admin endpoints (/status, /metrics)",
    "idp": "MOEX SSO emulator (Keycloak token endpoint)",
    "api": "MOEX NTB API emulator",
    "kisc": "KISC gateway emulator (WSO2, mTLS)",
    "passport": "MOEX Passport emulator",
    "registration": "MOEX client registration API emulator",
    "mpt": "MPT true API emulator",
    "xtrace": "MPT xTrace emulator",
}
