"""Wiring: builds every upstream from the config and runs the proxy and admin listeners."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from aiohttp import web

from sidecar.admin import admin_app
from sidecar.auth import token_source
from sidecar.config import Config, parse_host_port
from sidecar.proxy.forward import UpstreamClient
from sidecar.proxy.listener import ProxyHandler, start_listener
from sidecar.proxy.upstream import UpstreamRuntime
from sidecar.tls import client_context

log = structlog.get_logger("sidecar")


class Sidecar:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.upstreams: dict[str, UpstreamRuntime] = {}
        self._listener: asyncio.Server | None = None
        self._server: web.Server | None = None
        self._admin: web.AppRunner | None = None
        self.proxy_port = 0
        self.admin_port = 0

    async def start(self) -> None:
        """Build upstreams (TLS errors surface here), then listen. Eager logins start now."""
        for name, cfg in self.config.upstreams.items():
            ctx = client_context(cfg.tls)
            self.upstreams[name] = UpstreamRuntime(
                name=name,
                config=cfg,
                client=UpstreamClient(ctx, cfg.timeouts),
                tokens=token_source(name, cfg, ctx),
            )
        for runtime in self.upstreams.values():
            if runtime.config.eager:
                await runtime.tokens.start()

        handler = ProxyHandler(self.upstreams, list(self.config.passthrough))
        host, port = parse_host_port(self.config.listen.proxy)
        self._listener, self._server = await start_listener(handler, host, port)
        self.proxy_port = self._listener.sockets[0].getsockname()[1]

        ahost, aport = parse_host_port(self.config.listen.admin)
        self._admin = web.AppRunner(
            admin_app(self.upstreams), access_log=None, handle_signals=False
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

    async def stop(self, grace: float = 5.0) -> None:
        if self._listener is not None:
            self._listener.close()
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await self._server.shutdown(grace)
        if self._admin is not None:
            await self._admin.cleanup()
        for runtime in self.upstreams.values():
            await runtime.close()
        log.info("stopped")
