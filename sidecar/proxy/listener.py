"""The proxy listener: accepts the app's HTTP/1.1 requests and hands each to its upstream.

The wire work (parsing, keep-alive, framing) is in :mod:`sidecar.http1.server`; this
module only decides where a request goes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from sidecar.config.fields import parse_host_port
from sidecar.http1.answer import LocalAnswer
from sidecar.http1.request import Handler, ServerRequest
from sidecar.http1.server import HttpServer
from sidecar.interception.intercept import Interceptor
from sidecar.metrics import Metrics
from sidecar.proxy.errors import error_response
from sidecar.proxy.pipeline import proxy_request
from sidecar.proxy.router import BadTarget, Router, request_target
from sidecar.proxy.tunnel import tunnel
from sidecar.proxy.upstream import UpstreamRuntime

log = structlog.get_logger("sidecar.proxy")
# The status each refusal of the HTTP parser answers (sidecar.http1.server_connection).
_MALFORMED_STATUS = {"bad_request": 400, "uri_too_long": 414, "headers_too_large": 431}


class ProxyHandler:
    def __init__(
        self,
        upstreams: dict[str, UpstreamRuntime],
        passthrough: list[str],
        metrics: Metrics,
        interceptor: Interceptor | None = None,
    ) -> None:
        self._metrics = metrics
        self._interceptor = interceptor  # None: interception is off (no config block)
        self.update(upstreams, passthrough)

    def update(self, upstreams: dict[str, UpstreamRuntime], passthrough: list[str]) -> None:
        """Route by a (new) set of upstreams; requests in progress keep the ones they have."""
        self.upstreams = upstreams
        self._router = Router({name: u.config.match for name, u in upstreams.items()})
        self._passthrough = Router({"passthrough": passthrough}) if passthrough else None

    def __call__(self, request: ServerRequest) -> Awaitable[None]:
        """What answers this request, as an awaitable (no coroutine of its own: the server
        counts requests in progress)."""
        return self._route(request)

    def _route(self, request: ServerRequest) -> Awaitable[None]:
        """What answers this request, as an awaitable (one coroutine less on the hot path)."""
        if request.method == "TRACE":
            # An upstream answering TRACE echoes the request, with the Authorization the
            # sidecar adds: a token in a response body. Refused before anything is routed.
            return self._refuse(
                request, 405, "method_not_allowed",
                "TRACE is not forwarded: the upstream would echo the sidecar's credentials",
            ).send(request)
        if request.method == "CONNECT":
            return self._connect(request)
        if "Upgrade" in request.headers:
            return self._refuse(
                request, 400, "upgrade_refused", "protocol upgrades are not proxied"
            ).send(request)
        try:
            target = request_target(request.raw_path, request.headers.get("Host"))
        except BadTarget as exc:
            return self._refuse(request, 400, "bad_request", str(exc)).send(request)
        name = self._router.resolve(target.host, target.port)
        if name is None:
            log.info("refused_unknown_host", host=target.host, port=target.port)
            return self._refuse(
                request, 403, "unknown_host",
                f"{target.host}:{target.port} is not a configured upstream; the sidecar only "
                "forwards to hosts listed in upstreams.*.match",
            ).send(request)
        return proxy_request(request, self.upstreams[name], target.path_qs, target.origin)

    def _refuse(
        self, request: ServerRequest, status: int, error: str, message: str
    ) -> LocalAnswer:
        # No upstream is known yet, so these are counted under a fixed label, never the host.
        self._metrics.refused_early(request.method, status, error)
        return error_response(status, error, message)

    def malformed(self, error: str) -> None:
        """A request head refused by the HTTP parser (counted like the refusals above; its
        method is unknown)."""
        self._metrics.refused_early("", _MALFORMED_STATUS.get(error, 400), error)

    async def _connect(self, request: ServerRequest) -> None:
        try:
            host, port = parse_host_port(request.raw_path)
        except ValueError:
            await self._refuse(request, 400, "bad_request", "CONNECT needs host:port").send(
                request)
            return
        name = self._router.resolve(host, port)
        if (
            name is not None and self._interceptor is not None
            and self.upstreams[name].config.interception
        ):
            await self._interceptor.serve(request, name, host, self._inside(name, port))
            return
        if self._passthrough is None or self._passthrough.resolve(host, port) is None:
            log.info("refused_connect", host=host, port=port)
            await self._refuse(
                request, 403, "connect_refused",
                f"CONNECT to {host}:{port} is not allowed; only hosts in passthrough are tunnelled",
            ).send(request)
            return
        await tunnel(request, host, port, connect_timeout=10.0)

    def _inside(self, name: str, port: int) -> Callable[[bool], Handler]:
        """The handler of requests inside an intercepted tunnel: they go to the upstream the
        CONNECT matched, and only there (a Host naming another upstream is refused)."""

        def handler_for(tls: bool) -> Handler:
            scheme = "https://" if tls else "http://"

            def handle(request: ServerRequest) -> Awaitable[None]:
                if request.method == "CONNECT":
                    return self._refuse(
                        request, 403, "connect_refused",
                        "CONNECT inside an intercepted tunnel is not served",
                    ).send(request)
                if request.method == "TRACE" or "Upgrade" in request.headers:
                    return self._route(request)  # refused there, as outside a tunnel
                host_header = request.headers.get("Host")
                try:
                    if request.raw_path.startswith("/"):
                        if not host_header:
                            raise BadTarget("origin-form request without a Host header")
                        host, inner_port = parse_host_port(host_header, default_port=port)
                        path_qs, origin = request.raw_path, scheme + host_header
                    else:
                        target = request_target(request.raw_path, host_header)
                        host, inner_port = target.host, target.port
                        path_qs, origin = target.path_qs, target.origin
                except (BadTarget, ValueError) as exc:
                    return self._refuse(request, 400, "bad_request", str(exc)).send(request)
                upstream = self.upstreams.get(name)
                if upstream is None or self._router.resolve(host, inner_port) != name:
                    log.info("refused_host_mismatch", host=host, upstream=name)
                    return self._refuse(
                        request, 403, "host_mismatch",
                        f"{host}:{inner_port} is not a host of upstream {name}, which this "
                        "tunnel was opened to; open a tunnel to that host instead",
                    ).send(request)
                return proxy_request(request, upstream, path_qs, origin)

            return handle

        return handler_for


async def start_listener(
    handler: ProxyHandler,
    host: str,
    port: int,
    idle_timeout: float = 75.0,
    max_connections: int = 1024,
    on_shed: Callable[[], None] = lambda: None,
) -> tuple[asyncio.Server, HttpServer]:
    server = HttpServer(handler, idle_timeout, handler.malformed, max_connections, on_shed)
    loop = asyncio.get_running_loop()
    listener = await loop.create_server(server, host, port, reuse_address=True, backlog=1024)
    return listener, server
