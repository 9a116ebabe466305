"""Wiring: builds every upstream from the config and runs the proxy and admin listeners."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import structlog

from sidecar import logs
from sidecar.admin import AdminRoutes
from sidecar.auth import TokenSource, rejection_policy, token_source
from sidecar.config import Config, Upstream, parse_host_port
from sidecar.config.models import Tls
from sidecar.http1.server import ProxyServer
from sidecar.metrics import Metrics
from sidecar.proxy.forward import UpstreamClient
from sidecar.proxy.listener import ProxyHandler, start_listener
from sidecar.proxy.ratelimit import RateLimiter
from sidecar.proxy.upstream import UpstreamRuntime
from sidecar.tls import CERT_WARNING_DAYS, client_context, client_identity

log = structlog.get_logger("sidecar")


class Sidecar:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.upstreams: dict[str, UpstreamRuntime] = {}
        self.metrics = Metrics()
        self._listener: asyncio.Server | None = None
        self._server: ProxyServer | None = None
        self._admin: asyncio.Server | None = None
        self._admin_server: ProxyServer | None = None
        self._handler: ProxyHandler | None = None
        self._cert_watch: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._retired: set[UpstreamRuntime] = set()  # replaced by a reload, still draining
        self.proxy_port = 0
        self.admin_port = 0
        self.draining = False  # set by SIGTERM: /readyz fails so traffic moves elsewhere
        self._stopped = False

    async def start(self) -> None:
        """Build upstreams (TLS errors surface here), then listen. Eager logins start now."""
        for name, cfg in self.config.upstreams.items():
            self.upstreams[name] = self._build(name, cfg)
        for runtime in self.upstreams.values():
            if runtime.config.eager:
                await runtime.tokens.start()
        self.check_certificates()
        self._cert_watch = asyncio.get_running_loop().create_task(self._watch_certificates())

        self._handler = ProxyHandler(self.upstreams, list(self.config.passthrough), self.metrics)
        host, port = parse_host_port(self.config.listen.proxy)
        self._listener, self._server = await start_listener(
            self._handler, host, port, self.config.listen.idle_timeout
        )
        self.proxy_port = self._listener.sockets[0].getsockname()[1]

        ahost, aport = parse_host_port(self.config.listen.admin)
        self._admin_server = ProxyServer(AdminRoutes(self), 30.0, lambda _: None)
        self._admin = await asyncio.get_running_loop().create_server(
            self._admin_server, ahost, aport, reuse_address=True
        )
        self.admin_port = self._admin.sockets[0].getsockname()[1]
        log.info(
            "started",
            proxy=f"{host}:{self.proxy_port}",
            admin=f"{ahost}:{self.admin_port}",
            upstreams=sorted(self.upstreams),
        )

    def _build(
        self,
        name: str,
        cfg: Upstream,
        tokens: TokenSource | None = None,
        limiter: RateLimiter | None = None,
    ) -> UpstreamRuntime:
        ctx = client_context(cfg.tls)
        metrics = self.metrics.for_upstream(name)
        runtime = UpstreamRuntime(
            name=name,
            config=cfg,
            client=UpstreamClient(ctx, cfg.timeouts),
            tokens=tokens or token_source(name, cfg, ctx, metrics),
            rejection=rejection_policy(cfg),
            metrics=metrics,
            limiter=limiter or (RateLimiter(cfg.rate_limit) if cfg.rate_limit else None),
        )
        runtime.set_client_cert(client_identity(cfg.tls))
        return runtime

    async def apply(self, new: Config, changed_files: set[Path] | None = None) -> None:
        """Switch to a new config without dropping requests. Everything new is built first,
        so a bad certificate rejects the whole reload and the old config stays.

        Unchanged upstreams keep their token; when their TLS files changed (a rotated
        certificate under the same path) new connections use the new material."""
        built: dict[str, UpstreamRuntime] = {}
        renewals: list[tuple[UpstreamRuntime, ssl.SSLContext, ssl.SSLContext]] = []
        try:
            for name, cfg in new.upstreams.items():
                current = self.upstreams.get(name)
                signer_rotated = _signer_touched(cfg, changed_files)
                if current is None or current.config != cfg or signer_rotated:
                    # Same credentials and TLS: hand the live token over, so one credential
                    # never has two managers refreshing it (WSO2 refresh tokens are single-use);
                    # the same for the rate limiter, so one target never gets two queues.
                    old = current.config if current is not None else None
                    keep_tokens = (
                        old is not None
                        and (old.auth, old.tls) == (cfg.auth, cfg.tls)
                        and not signer_rotated
                    )
                    keep_limiter = old is not None and old.rate_limit == cfg.rate_limit
                    built[name] = self._build(
                        name,
                        cfg,
                        current.tokens if keep_tokens and current else None,
                        current.limiter if keep_limiter and current else None,
                    )
                elif _tls_touched(cfg, changed_files):
                    ctx = client_context(cfg.tls)
                    auth_tls = getattr(cfg.auth, "tls", None)
                    renewals.append((current, ctx, client_context(auth_tls) if auth_tls else ctx))
        except BaseException:
            for runtime in built.values():  # never the token source or limiter it took over
                await self._close_parts(runtime)
            raise

        for runtime, ctx, auth_ctx in renewals:
            runtime.client.renew_tls(ctx)
            runtime.tokens.renew_tls(auth_ctx)
            runtime.set_client_cert(client_identity(runtime.config.tls))
            log.info("tls_renewed", upstream=runtime.name)
        retired = [rt for n, rt in self.upstreams.items() if n not in new.upstreams or n in built]
        for name in [n for n in self.upstreams if n not in new.upstreams]:
            del self.upstreams[name]
        self.upstreams.update(built)
        if self._handler is not None:
            self._handler.update(self.upstreams, list(new.passthrough))
        for runtime in built.values():
            if runtime.config.eager:
                await runtime.tokens.start()
        for runtime in retired:
            self._retired.add(runtime)
            self._later(self._retire(runtime))
        if new.listen != self.config.listen:
            log.warning("listen_change_needs_restart", running=self.config.listen.model_dump())
        self.config = new
        logs.configure_for(new)  # a new log level, and new secrets to keep out of logs
        self.check_certificates()
        log.info(
            "config_applied",
            rebuilt=sorted(built),
            renewed=sorted(r.name for r, _, _ in renewals),
            removed=sorted(r.name for r in retired if r.name not in new.upstreams),
        )

    async def _retire(self, runtime: UpstreamRuntime) -> None:
        await runtime.wait_idle()
        self._retired.discard(runtime)
        await self._close_parts(runtime)

    async def _close_parts(self, runtime: UpstreamRuntime) -> None:
        """Close what a retired upstream does not share with a live one (token source, limiter
        handed over on reload)."""
        live = [r for r in self.upstreams.values() if r is not runtime]
        await runtime.close(
            tokens=not any(runtime.tokens is r.tokens for r in live),
            limiter=not any(runtime.limiter is r.limiter for r in live if r.limiter),
        )

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
        if self._server is not None and not await self._server.wait_idle(grace):
            log.warning("shutdown_grace_expired", unfinished=self._server.inflight)
        if self._server is not None:
            # Closing connections cuts request bodies, so it comes only once the in-flight
            # requests are done (or the grace is over).
            await self._server.shutdown(1.0)
        if self._admin is not None:
            self._admin.close()
        if self._admin_server is not None:
            await self._admin_server.shutdown(1.0)
        for task in list(self._background):
            task.cancel()
        for runtime in list(self._retired):
            await self._close_parts(runtime)
        for runtime in self.upstreams.values():
            await runtime.close()
        self._retired.clear()
        logs.access_log.flush()
        log.info("stopped")


def _tls_files(tls: Tls | None) -> set[Path]:
    if tls is None:
        return set()
    return {p for p in (tls.ca_file, tls.cert_file, tls.key_file, tls.p12_file) if p is not None}


def _tls_touched(cfg: Upstream, changed_files: set[Path] | None) -> bool:
    """Whether the upstream's TLS material may have changed (None: unknown, assume so)."""
    if changed_files is None:
        return True
    files = _tls_files(cfg.tls) | _tls_files(getattr(cfg.auth, "tls", None))
    return bool(files & changed_files)


def _signer_touched(cfg: Upstream, changed_files: set[Path] | None) -> bool:
    """Whether a signing key or certificate file of the upstream's login changed on disk."""
    signer = getattr(cfg.auth, "signer", None)
    if signer is None or changed_files is None:
        return False  # SIGHUP with no file news: a changed config is caught by comparison
    files = {signer.cert_file, signer.key_file, signer.p12_file}
    if signer.ncanode is not None:
        files.add(signer.ncanode.p12_file)
    return bool({f for f in files if f is not None} & changed_files)
