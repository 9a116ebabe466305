"""Sidecars started in-process by the conftest fixtures: the factory's type, the config merge
it applies, the proxy URL an HTTP client uses, and the KISC sandbox a fixture yields."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any

from sidecar.app import Sidecar
from sidecar.sandbox.pki import Pki
from sidecar.sandbox.servers import TlsServer
from sidecar.sandbox.wso2 import Wso2Gateway

SidecarFactory = Callable[..., Awaitable[Sidecar]]


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, nested dicts merged key by key (a copy)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def proxy_url(sidecar: Sidecar) -> str:
    return f"http://127.0.0.1:{sidecar.proxy_port}"


def admin_url(sidecar: Sidecar) -> str:
    return f"http://127.0.0.1:{sidecar.admin_port}"


class Kisc:
    """The KISC sandbox: a WSO2 gateway and its TLS server, with the sandbox PKI."""

    def __init__(self, gateway: Wso2Gateway, server: TlsServer, pki: Pki) -> None:
        self.gateway, self.server, self.pki = gateway, server, pki
