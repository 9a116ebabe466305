"""The admin listener: liveness, readiness, per-upstream status and metrics for operators.

Served by the same small HTTP/1.1 server as the proxy (no web framework loaded for four
read-only routes, which keeps the sidecar's memory down).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar import __version__
from sidecar.http1.server import AppRequest

if TYPE_CHECKING:
    from sidecar.app import Sidecar

# An answer: status, content type, body.
Answer = tuple[int, str, bytes]
_JSON = "application/json"


def _json(status: int, value: Any) -> Answer:
    return status, _JSON, json.dumps(value).encode()


class AdminRoutes:
    """GET (and HEAD) routes, read at call time: a config reload may change the upstreams."""

    def __init__(self, sidecar: Sidecar) -> None:
        self._sidecar = sidecar
        self.routes: dict[str, Callable[[], Answer]] = {
            "/healthz": self.healthz,
            "/readyz": self.readyz,
            "/status": self.status,
            "/metrics": self.metrics,
        }

    def healthz(self) -> Answer:
        return _json(200, {"status": "ok"})

    def readyz(self) -> Answer:
        sidecar = self._sidecar
        if sidecar.draining:
            return _json(503, {"status": "shutting down"})
        missing = [
            {"upstream": name, "reason": u.tokens.status().get("last_error") or "no token yet"}
            for name, u in sidecar.upstreams.items()
            if u.config.eager and not u.tokens.ready
        ]
        if missing:
            return _json(503, {"status": "not ready", "missing": missing})
        return _json(200, {"status": "ready"})

    def status(self) -> Answer:
        return _json(200, {
            "version": __version__,
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
                }
                for name, u in self._sidecar.upstreams.items()
            },
        })

    def metrics(self) -> Answer:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self._sidecar.metrics.registry)

    async def __call__(self, request: AppRequest) -> None:
        path = request.raw_path.split("?", 1)[0]
        route = self.routes.get(path)
        if route is None:
            status, kind, body = _json(404, {"error": "not_found", "routes": sorted(self.routes)})
        elif request.method not in ("GET", "HEAD"):
            status, kind, body = _json(405, {"error": "method_not_allowed", "allowed": "GET"})
        else:
            status, kind, body = route()
        headers = CIMultiDict({"Content-Type": kind, "Cache-Control": "no-store"})
        if status == 405:
            headers["Allow"] = "GET, HEAD"
        await request.respond(status, headers, body)
