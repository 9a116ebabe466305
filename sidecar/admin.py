"""The admin listener: liveness, readiness, per-upstream status and metrics for operators.

Served by the same small HTTP/1.1 server as the proxy (no web framework loaded for four
read-only routes, which keeps the sidecar's memory down).

Readiness has two meanings. ``/readyz?strict``: every eager upstream holds a valid token now
(the startup probe: the app starts once the first tokens are in). ``/readyz``: the same until
that has been true once, then "the sidecar serves": an IdP outage must not turn every replica
NotReady at once and take the app out of its Service, traffic that needs no token included
(a request that needs a missing token gets its precise 503 ``no_token``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from typing import Protocol
from urllib.parse import parse_qsl

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar import __version__, hotpath
from sidecar.config import Config
from sidecar.http1.answer import LocalAnswer, answer_headers, json_answer
from sidecar.http1.request import ServerRequest
from sidecar.metrics import Metrics
from sidecar.proxy.upstream import UpstreamRuntime
from sidecar.store import Store


class Observed(Protocol):
    """What the admin routes read (the running sidecar), at call time: a reload may change
    the upstreams."""

    draining: bool
    metrics: Metrics
    config: Config

    @property
    def upstreams(self) -> Mapping[str, UpstreamRuntime]: ...



class AdminRoutes:
    """GET (and HEAD) routes."""

    def __init__(self, sidecar: Observed) -> None:
        self._sidecar = sidecar
        self._started = False  # every eager upstream held a token once: see the module doc
        self.routes: dict[str, Callable[[], LocalAnswer]] = {
            "/healthz": self.healthz,
            "/readyz": self.readyz,
            "/status": self.status,
            "/metrics": self.metrics,
        }

    def healthz(self) -> LocalAnswer:
        return json_answer(200, {"status": "ok"})

    def readyz(self, strict: bool = False) -> LocalAnswer:
        sidecar = self._sidecar
        if sidecar.draining:
            return json_answer(503, {"status": "shutting down"})
        missing = [
            {"upstream": name, "reason": u.tokens.status().get("last_error") or "no token yet"}
            for name, u in sidecar.upstreams.items()
            if u.config.eager and not u.tokens.ready
        ]
        if not missing:
            self._started = True
            return json_answer(200, {"status": "ready"})
        if strict or not self._started:
            return json_answer(503, {"status": "not ready", "missing": missing})
        # Serving: requests for these upstreams get 503 no_token until their IdP answers.
        return json_answer(200, {"status": "ready", "without_token": missing})

    def status(self) -> LocalAnswer:
        return json_answer(200, {
            "version": __version__,
            "hot_path": hotpath.describe(),  # compiled modules, or pure Python
            "upstreams": {
                name: {
                    "target": u.config.target,
                    "token": u.tokens.status(),
                    "client_cert": u.client_cert.status() if u.client_cert else None,
                    "rate_limit": (
                        {"queue": u.limiter.queue_length,
                         "paused_for": round(u.limiter.paused_for, 1)}
                        if u.limiter else None
                    ),
                    "breaker": u.breaker.status(),
                }
                for name, u in self._sidecar.upstreams.items()
            },
            # The shared store (null: memory, nothing shared): while it is down this replica
            # works alone, as a single sidecar does.
            "store": self._store_status(),
        })

    def _store_status(self) -> dict[str, object] | None:
        store: Store | None = getattr(self._sidecar, "store", None)  # observers without one
        return store.status() if store is not None else None

    def metrics(self) -> LocalAnswer:
        body = generate_latest(self._sidecar.metrics.registry)
        return LocalAnswer(200, answer_headers(CONTENT_TYPE_LATEST), body)

    def _may_see_status(self, request: ServerRequest) -> bool:
        if self._sidecar.config.listen.expose_status:
            return True
        host = request.peer_host
        try:
            address = ipaddress.ip_address((host or "").split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped  # a dual-stack listener sees ::ffff:127.0.0.1
        return address.is_loopback

    async def __call__(self, request: ServerRequest) -> None:
        path = request.raw_path.split("?", 1)[0]
        route = self.routes.get(path)
        if route is None:
            answer = json_answer(404, {"error": "not_found", "routes": sorted(self.routes)})
        elif path == "/status" and not self._may_see_status(request):
            answer = json_answer(403, {
                "error": "status_loopback_only",
                "message": "/status is served to loopback clients only (kubectl exec or "
                           "port-forward); set listen.expose_status: true to serve it to all",
            })
        elif request.method not in ("GET", "HEAD"):
            answer = json_answer(405, {"error": "method_not_allowed", "allowed": "GET"})
            answer.headers["Allow"] = "GET, HEAD"
        elif path == "/readyz":
            answer = self.readyz(strict=_strict(request.raw_path))
        else:
            answer = route()
        await answer.send(request)


def _strict(raw_path: str) -> bool:
    """``/readyz?strict`` (or ``strict=1``/``true``): today's tokens, not start-up's."""
    query = raw_path.partition("?")[2]
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "strict":
            return value.lower() not in ("0", "false", "no")
    return False
