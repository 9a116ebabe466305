"""The running sidecar: builds every upstream from the config, runs the proxy and admin
listeners, applies reloads (what changes is decided in :mod:`sidecar.reload`) and stops
gracefully."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import Counter

from sidecar import hotpath, logs
from sidecar.admin import AdminRoutes
from sidecar.config import Config, parse_host_port
from sidecar.config.files import files_of
from sidecar.http1.server import HttpServer
from sidecar.interception.intercept import build_interceptor
from sidecar.metrics import Metrics
from sidecar.proxy.body import ReplayBudget
from sidecar.proxy.listener import ProxyHandler, start_listener
from sidecar.proxy.upstream import UpstreamRuntime, build_upstream
from sidecar.reload import plan_reload
from sidecar.store import build_store
from sidecar.tls import CERT_WARNING_DAYS, client_context

log = structlog.get_logger("sidecar")


class Sidecar:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.upstreams: dict[str, UpstreamRuntime] = {}
        self.metrics = Metrics()
        self.replay_budget = ReplayBudget(config.replay_budget)  # one for the whole process
        self.metrics.replay_kept_bytes.set_function(lambda: self.replay_budget.used)
        self.store = build_store(config.store, self.metrics)  # shared with other replicas
        self._listener: asyncio.Server | None = None
        self._server: HttpServer | None = None
        self._admin: asyncio.Server | None = None
        self._admin_server: HttpServer | None = None
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
        # The interception CA first: an unusable one (or state_dir) stops the start.
        interceptor = build_interceptor(self.config.interception, self.metrics)
        await self.store.start()  # connected (or down) before the first login
        for name, cfg in self.config.upstreams.items():
            self.upstreams[name] = build_upstream(
                name, cfg, self.metrics, self.replay_budget, store=self.store
            )
        for runtime in self.upstreams.values():
            if runtime.config.eager:
                await runtime.tokens.start()
        self.check_certificates()
        self._cert_watch = asyncio.get_running_loop().create_task(self._watch_certificates())

        self._handler = ProxyHandler(
            self.upstreams, list(self.config.passthrough), self.metrics, interceptor
        )
        listen = self.config.listen
        host, port = parse_host_port(listen.proxy)
        shed = self.metrics.connections_shed
        self._listener, self._server = await start_listener(
            self._handler, host, port, listen.idle_timeout, listen.max_connections,
            shed.labels("proxy").inc,
        )
        self.proxy_port = self._listener.sockets[0].getsockname()[1]

        ahost, aport = parse_host_port(listen.admin)
        self._admin_server = HttpServer(
            AdminRoutes(self), 30.0, lambda _: None, listen.admin_max_connections,
            shed.labels("admin").inc,
        )
        self._admin = await asyncio.get_running_loop().create_server(
            self._admin_server, ahost, aport, reuse_address=True
        )
        self.admin_port = self._admin.sockets[0].getsockname()[1]
        log.info(
            "started",
            proxy=f"{host}:{self.proxy_port}",
            admin=f"{ahost}:{self.admin_port}",
            upstreams=sorted(self.upstreams),
            hot_path=hotpath.describe(),
        )

    @property
    def reload_counter(self) -> Counter:
        return self.metrics.config_reloads

    async def apply(self, new: Config, changed_files: set[Path] | None = None) -> None:
        """Switch to a new config without dropping requests. Everything new is built first,
        so a bad certificate rejects the whole reload and the old config stays."""
        plan = plan_reload(self.upstreams, new, changed_files)
        built: dict[str, UpstreamRuntime] = {}
        renewals = []
        try:
            for name, rebuild in plan.rebuild.items():
                built[name] = build_upstream(
                    name, rebuild.config, self.metrics, self.replay_budget, rebuild.tokens,
                    rebuild.limiter, self.store,
                )
            for runtime in plan.renew_tls:
                ctx = client_context(runtime.config.tls)
                auth_tls = getattr(runtime.config.auth, "tls", None)
                renewals.append((runtime, ctx, client_context(auth_tls) if auth_tls else ctx))
        except BaseException:
            for runtime in built.values():  # never the token source or limiter it took over
                await self._close_parts(runtime)
            raise

        for runtime, ctx, auth_ctx in renewals:
            runtime.renew_tls(ctx, auth_ctx)
            log.info("tls_renewed", upstream=runtime.name)
        retired = [rt for n, rt in self.upstreams.items() if n in plan.removed or n in built]
        for name in plan.removed:
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
        if new.store != self.config.store:
            log.warning("store_change_needs_restart", running=self.config.store.type)
        if new.listen != self.config.listen:
            log.warning("listen_change_needs_restart", running=self.config.listen.model_dump())
        # The interception CA is read once, at start: a new block or new CA files wait for it.
        if new.interception != self.config.interception or (
            new.interception is not None and changed_files
            and changed_files & files_of(new.interception)
        ):
            log.warning("interception_change_needs_restart")
        self.config = new
        self.replay_budget.limit = new.replay_budget
        logs.configure_for(new)  # a new log level, and new secrets to keep out of logs
        self.check_certificates()
        log.info(
            "config_applied",
            rebuilt=sorted(built),
            renewed=sorted(r.name for r, _, _ in renewals),
            removed=sorted(plan.removed),
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
        if self._server is not None:
            self._server.draining = True
        log.info("draining", delay=delay, grace=grace)
        await asyncio.sleep(delay)
        await self.stop(grace)

    async def stop(self, grace: float = 5.0) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.draining = True
        if self._server is not None:
            self._server.draining = True
        if self._cert_watch is not None:
            self._cert_watch.cancel()
        if self._listener is not None:
            self._listener.close()  # no new connections from here on
        if self._server is not None and not await self._server.inflight.wait_idle(grace):
            log.warning("shutdown_grace_expired", unfinished=self._server.inflight.count)
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
        await self.store.close()
        logs.access_log.flush()
        log.info("stopped")

