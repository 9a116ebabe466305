"""The admin listener: liveness, readiness and per-upstream status for operators."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from sidecar import __version__

if TYPE_CHECKING:
    from sidecar.app import Sidecar


def admin_app(sidecar: Sidecar) -> web.Application:
    # Handlers read sidecar.upstreams at call time: a config reload may change them.
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if sidecar.draining:
            return web.json_response({"status": "shutting down"}, status=503)
        missing = [
            {"upstream": name, "reason": u.tokens.status().get("last_error") or "no token yet"}
            for name, u in sidecar.upstreams.items()
            if u.config.eager and not u.tokens.ready
        ]
        if missing:
            return web.json_response({"status": "not ready", "missing": missing}, status=503)
        return web.json_response({"status": "ready"})

    async def status(_: web.Request) -> web.Response:
        return web.json_response(
            {
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
                    for name, u in sidecar.upstreams.items()
                },
            }
        )

    async def scrape(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(sidecar.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    return app
