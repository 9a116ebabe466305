"""JSON error answers the sidecar itself gives: the app always learns which upstream and why."""

from __future__ import annotations

import json
import math

from aiohttp import web


def error_response(
    status: int,
    error: str,
    message: str,
    *,
    upstream: str | None = None,
    retry_after: float | None = None,
) -> web.Response:
    body: dict[str, object] = {"error": error, "message": message}
    if upstream is not None:
        body["upstream"] = upstream
    headers = {"Cache-Control": "no-store"}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return web.Response(
        status=status,
        text=json.dumps(body, ensure_ascii=False),
        content_type="application/json",
        headers=headers,
    )
