"""An upstream at run time: its config, its pooled client and its token source."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sidecar.auth.base import RejectionPolicy, TokenSource
from sidecar.config.models import Upstream
from sidecar.metrics import UpstreamMetrics
from sidecar.proxy.forward import UpstreamClient
from sidecar.proxy.ratelimit import RateLimiter
from sidecar.tls import ClientIdentity


@dataclass(eq=False)
class UpstreamRuntime:
    name: str
    config: Upstream
    client: UpstreamClient
    tokens: TokenSource
    rejection: RejectionPolicy
    metrics: UpstreamMetrics
    limiter: RateLimiter | None = None
    client_cert: ClientIdentity | None = None
    inflight: int = 0  # requests in progress, so a replaced upstream closes only when idle

    def set_client_cert(self, cert: ClientIdentity | None) -> None:
        self.client_cert = cert
        if cert is not None:
            self.metrics.client_cert_expiry(cert.not_after.timestamp())

    async def wait_idle(self, limit: float = 600.0) -> None:
        """Until the requests still using this upstream are done (a reload replaced it)."""
        waited = 0.0
        while self.inflight > 0 and waited < limit:
            await asyncio.sleep(0.1)
            waited += 0.1

    async def close(self, *, tokens: bool = True, limiter: bool = True) -> None:
        """Close this upstream; ``tokens``/``limiter`` False when a live one took them over."""
        if limiter and self.limiter is not None:
            await self.limiter.close()
        if tokens:
            await self.tokens.close()
        await self.client.close()
