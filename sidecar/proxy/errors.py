"""JSON error answers the sidecar itself gives: the app always learns which upstream and why."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from multidict import CIMultiDict

from sidecar.http1.server import AppRequest


@dataclass(frozen=True)
class LocalAnswer:
    """A whole answer made by the sidecar (not relayed from an upstream)."""

    status: int
    headers: CIMultiDict[str]
    body: bytes

    async def send(self, request: AppRequest) -> None:
        await request.respond(self.status, self.headers, self.body)


def error_response(
    status: int,
    error: str,
    message: str,
    *,
    upstream: str | None = None,
    retry_after: float | None = None,
) -> LocalAnswer:
    body: dict[str, object] = {"error": error, "message": message}
    if upstream is not None:
        body["upstream"] = upstream
    headers = CIMultiDict({"Content-Type": "application/json", "Cache-Control": "no-store"})
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
    return LocalAnswer(status, headers, json.dumps(body, ensure_ascii=False).encode())
