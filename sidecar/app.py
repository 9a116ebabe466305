"""Wiring: builds every upstream from the config and runs the proxy and admin listeners."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiohttp import web

from sidecar.admin import admin_app
from sidecar.auth import rejection_policy, token_source
from sidecar.config import Config, parse_host_port
from sidecar.metrics import Metrics
from sidecar.proxy.forward import UpstreamClient
from sidecar.proxy.listener import ProxyHandler, start_listener
from sidecar.proxy.upstream import UpstreamRuntime
from sidecar.tls import CERT_WARNING_DAYS, client_context, client_identity

log = structlog.get_logger("sidecar")


class Sidecar:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.upstreams: dict[str, UpstreamRuntime] = {}
        self.metrics = Metrics()
        self._listener: asyncio.Server | None = None
        self._server: web.Server | None = None
        self._admin: web.AppRunner | None = None
        self._handler: ProxyHandler | None = None
        self._cert_watch: asyncio.Task[None] | None = None
        self.proxy_port = 0
        self.admin_port = 0
        self.draining = False  # set by SIGTERM: /readyz fails so traffic moves elsewhere
        self._stopped = False

    async def start(self) -> None:
        """Build upstreams (TLS errors surface here), then listen. Eager logins start now."""
        for name, cfg in self.config.upstreams.items():
            ctx = client_context(cfg.tls)
            metrics = self.metrics.for_upstream(name)
            cert = client_identity(cfg.tls)
            if cert is not None:
                metrics.client_cert_expiry.set(cert.not_after.timestamp())
            self.upstreams[name] = UpstreamRuntime(
                name=name,
                config=cfg,
                client=UpstreamClient(ctx, cfg.timeouts),
                tokens=token_source(name, cfg, ctx, metrics),
                rejection=rejection_policy(cfg),
                metrics=metrics,
                client_cert=cert,
            )
        for runtime in self.upstreams.values():
            if runtime.config.eager:
                await runtime.tokens.start()
        self.check_certificates()
        self._cert_watch = asyncio.get_running_loop().create_task(self._watch_certificates())

        self._handler = ProxyHandler(self.upstreams, list(self.config.passthrough), self.metrics)
        host, port = parse_host_port(self.config.listen.proxy)
        self._listener, self._server = await start_listener(self._handler, host, port)
        self.proxy_port = self._listener.sockets[0].getsockname()[1]

        ahost, aport = parse_host_port(self.config.listen.admin)
        self._admin = web.AppRunner(
            admin_app(self), access_log=None, handle_signals=False
        )
        await self._admin.setup()
        await web.TCPSite(self._admin, ahost, aport, reuse_address=True).start()
        self.admin_port = int(self._admin.addresses[0][1])
        log.info(
            "started",
            proxy=f"{host}:{self.proxy_port}",
            admin=f"{ahost}:{self.admin_port}",
            upstreams=sorted(self.upstreams),
        )

    def check_certificates(self) -> None:
        """Warn while a client certificate is close to its end (KISC's live 14 days)."""
        for name, runtime in self.upstreams.items():
            cert = runtime.client_cert
            if cert is not None and cert.days_left() < CERT_WARNING_DAYS:
                log.warning(
                    "client_certificate_expiring",
                    upstream=name,
                    subject=cert.subject,
                    not_after=cert.not_after.isoformat(),
                    days_left=round(cert.days_left(), 2),
                )

    async def _watch_certificates(self) -> None:
        while True:
            await asyncio.sleep(3600)
            self.check_certificates()

    async def drain(self, delay: float | None = None, grace: float | None = None) -> None:
        """Graceful stop: not ready at once, keep taking connections for ``delay``, then stop
        accepting and give in-flight requests ``grace`` seconds."""
        delay = self.config.shutdown.delay if delay is None else delay
        grace = self.config.shutdown.grace if grace is None else grace
        self.draining = True
        log.info("draining", delay=delay, grace=grace)
        await asyncio.sleep(delay)
        await self.stop(grace)

    async def stop(self, grace: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.draining = True
        if self._cert_watch is not None:
            self._cert_watch.cancel()
        if self._listener is not None:
            self._listener.close()  # no new connections from here on
        if self._handler is not None and not await self._handler.wait_idle(grace):
            log.warning("shutdown_grace_expired", unfinished=self._handler.inflight)
        if self._server is not None:
            # aiohttp's shutdown stops reading request bodies, so it comes only once the
            # in-flight requests are done (or the grace is over).
            with contextlib.suppress(TimeoutError):
                await self._server.shutdown(1.0)
        if self._admin is not None:
            await self._admin.cleanup()
        for runtime in self.upstreams.values():
            await runtime.close()
        log.info("stopped")
