"""Whole answers the sidecar makes itself (errors, the admin routes), as opposed to answers
relayed from an upstream: JSON, never cached."""

from __future__ import annotations

import json
from dataclasses import dataclass

from multidict import CIMultiDict

from sidecar.http1.request import ServerRequest
from sidecar.http1.wire import REASONS, head


@dataclass(frozen=True)
class LocalAnswer:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    async def send(self, request: ServerRequest) -> None:
        await request.respond(self.status, self.headers, self.body)

    def encode(self) -> bytes:
        """The whole answer on the wire, closing the connection after it (for a refusal
        written straight to a transport, outside any request)."""
        headers = self.headers.copy()
        headers["Content-Length"] = str(len(self.body))
        headers["Connection"] = "close"
        line = f"HTTP/1.1 {self.status} {REASONS.get(self.status, 'Error')}"
        return head(line, headers.items()) + self.body


def answer_headers(content_type: str = "application/json") -> CIMultiDict[str]:
    return CIMultiDict({"Content-Type": content_type, "Cache-Control": "no-store"})


def json_answer(status: int, value: object) -> LocalAnswer:
    return LocalAnswer(status, answer_headers(), json.dumps(value, ensure_ascii=False).encode())


def error_answer(status: int, error: str, message: str, **extra: object) -> LocalAnswer:
    """``{"error": code, "message": why, ...}``: what every refusal of the sidecar looks like."""
    return json_answer(status, {"error": error, "message": message, **extra})
