"""An upstream at run time: its config, its pooled client, its token source and rate limiter,
built from its config (:func:`build_upstream`)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from sidecar.auth import rejection_policy, token_header, token_source
from sidecar.auth.base import RejectionPolicy, TokenSource
from sidecar.config.egress import egress_dialer
from sidecar.config.models import Upstream
from sidecar.inflight import InFlight
from sidecar.metrics import Metrics, UpstreamMetrics
from sidecar.proxy.body import ReplayBudget
from sidecar.proxy.breaker import Breaker
from sidecar.proxy.location import TargetUrls
from sidecar.proxy.ratelimit import RateLimiter
from sidecar.proxy.upstream_client import UpstreamClient
from sidecar.store import Store
from sidecar.tls import ClientIdentity, client_context, client_identity

# How long a replaced upstream may take to finish its requests before it is closed anyway.
RETIRE_LIMIT = 600.0


@dataclass(eq=False)
class UpstreamRuntime:
    name: str
    config: Upstream
    client: UpstreamClient
    tokens: TokenSource
    rejection: RejectionPolicy
    metrics: UpstreamMetrics
    replay_budget: ReplayBudget
    breaker: Breaker
    target_urls: TargetUrls  # recognises Location values that point at the target
    limiter: RateLimiter | None = None
    client_cert: ClientIdentity | None = None
    # Where the token goes: "Authorization: Bearer <token>" unless the auth block says.
    token_header: str = "Authorization"
    token_prefix: str = "Bearer "
    # Requests in progress, so a replaced upstream closes only when idle.
    inflight: InFlight = field(default_factory=InFlight)

    def __post_init__(self) -> None:
        self.metrics.track_inflight(self.inflight)
        self.metrics.track_breaker(self.breaker)

    def set_client_cert(self, cert: ClientIdentity | None) -> None:
        self.client_cert = cert
        if cert is not None:
            self.metrics.client_cert_expiry(cert.not_after.timestamp())

    def renew_tls(self, ctx: ssl.SSLContext, auth_ctx: ssl.SSLContext) -> None:
        """Rotated certificate files: new connections and IdP calls use them."""
        self.client.renew_tls(ctx)
        self.tokens.renew_tls(auth_ctx)
        self.set_client_cert(client_identity(self.config.tls))

    async def wait_idle(self, limit: float = RETIRE_LIMIT) -> None:
        """Until the requests still using this upstream are done (a reload replaced it)."""
        await self.inflight.wait_idle(limit)

    async def close(self, *, tokens: bool = True, limiter: bool = True) -> None:
        """Close this upstream; ``tokens``/``limiter`` False when a live one took them over."""
        if limiter and self.limiter is not None:
            await self.limiter.close()
        if tokens:
            await self.tokens.close()
        await self.client.close()


def build_upstream(
    name: str,
    cfg: Upstream,
    metrics: Metrics,
    replay_budget: ReplayBudget,
    tokens: TokenSource | None = None,
    limiter: RateLimiter | None = None,
    store: Store | None = None,
) -> UpstreamRuntime:
    """An upstream from its config (TLS files load here: errors surface as ``SetupError``).
    ``tokens``/``limiter`` hand over live ones from the runtime this one replaces."""
    ctx = client_context(cfg.tls)
    upstream_metrics = metrics.for_upstream(name)
    if tokens is None:
        shared = store.coordinator(cfg) if store is not None else None
        tokens = token_source(name, cfg, ctx, upstream_metrics, shared)
    if limiter is None and cfg.rate_limit is not None:
        limiter = RateLimiter(cfg.rate_limit)
        slots = store.shared_limit(
            cfg, limiter.shared_interval(), cfg.rate_limit.burst, limiter.pause_here
        ) if store is not None else None
        if slots is not None:
            limiter.share(slots)
    runtime = UpstreamRuntime(
        name=name,
        config=cfg,
        client=UpstreamClient(
            ctx, cfg.timeouts, cfg.max_connections, egress_dialer(cfg.egress_proxy)
        ),
        tokens=tokens,
        rejection=rejection_policy(cfg),
        metrics=upstream_metrics,
        replay_budget=replay_budget,
        # A rebuilt upstream starts closed: its config (target, timeouts) may have changed.
        breaker=Breaker(name, cfg.circuit_breaker),
        target_urls=TargetUrls(cfg.target),
        limiter=limiter,
    )
    runtime.token_header, runtime.token_prefix = token_header(cfg)
    runtime.set_client_cert(client_identity(cfg.tls))
    return runtime
