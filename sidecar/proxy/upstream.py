"""An upstream at run time: its config, its pooled client and its token source."""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.auth.base import RejectionPolicy, TokenSource
from sidecar.config.models import Upstream
from sidecar.metrics import UpstreamMetrics
from sidecar.proxy.forward import UpstreamClient
from sidecar.tls import ClientIdentity


@dataclass
class UpstreamRuntime:
    name: str
    config: Upstream
    client: UpstreamClient
    tokens: TokenSource
    rejection: RejectionPolicy
    metrics: UpstreamMetrics
    client_cert: ClientIdentity | None = None

    async def close(self) -> None:
        await self.tokens.close()
        await self.client.close()
