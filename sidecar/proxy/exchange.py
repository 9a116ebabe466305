"""One request's state on its way through the pipeline, the upstream calls made for it, and
its account (the access line and the metrics) once it is over.

The exchange owns the upstream answers it receives: a new send closes the previous answer,
and :meth:`Exchange.close` closes the last one, which gives its connection back to the pool
(kept only when it was read to its end). No other code releases a connection.
"""

from __future__ import annotations

import time

from multidict import CIMultiDict

from sidecar.auth.base import NoToken, Token
from sidecar.http1.answer import LocalAnswer
from sidecar.http1.client import UpstreamResponse
from sidecar.http1.request import ServerRequest
from sidecar.logs import access_log
from sidecar.proxy.body import RequestBody
from sidecar.proxy.breaker import SILENT
from sidecar.proxy.errors import error_response
from sidecar.proxy.ratelimit import RateLimited
from sidecar.proxy.upstream import UpstreamRuntime
from sidecar.proxy.upstream_client import UpstreamFailure

# The sidecar's own refusals that count as "rejected locally" in the metrics.
_LOCAL_REJECTIONS = frozenset({
    "missing_header", "body_too_large", "no_token", "rate_limited", "upstream_unavailable",
})


class Exchange:
    """What one request picked up on its way through. A plain class with slots: one is made
    per request."""

    __slots__ = (
        "body", "broken", "bytes_out", "gone", "headers", "origin", "path_qs", "probe", "queued",
        "refused", "replayed", "request", "request_id", "response", "retried_429", "started",
        "upstream", "url",
    )

    def __init__(
        self, request: ServerRequest, upstream: UpstreamRuntime, path_qs: str, request_id: str,
        origin: str = "",
    ) -> None:
        self.request = request
        self.upstream = upstream
        self.path_qs = path_qs
        self.origin = origin  # the origin the app called: Location values go back to it
        self.probe = False  # this request is the circuit breaker's probe, not yet answered
        self.request_id = request_id
        self.started = time.monotonic()
        self.url = upstream.config.target + path_qs
        self.headers: CIMultiDict[str] = CIMultiDict()  # what goes upstream, set before a send
        self.body: RequestBody | None = None
        self.response: UpstreamResponse | None = None  # the upstream's latest answer
        self.replayed = False
        self.bytes_out = 0
        self.refused: str | None = None  # the sidecar's own error code, when it answered
        self.queued = 0.0  # seconds spent in the rate limiter's queue
        self.retried_429 = False
        self.broken = False  # the upstream broke off mid-body; the app's connection was cut
        self.gone = False  # the app hung up before its answer was out

    async def send(self, token: Token, *, first: bool = True) -> UpstreamResponse:
        """The upstream call with this token; a later one (a replay, a retry) replays the
        kept body and closes the answer it replaces."""
        if self.response is not None:
            self.response.close()
            self.response = None
        body = self.body
        data = None if body is None else (body.stream() if first else body.replay())
        headers = self.headers
        upstream = self.upstream
        headers[upstream.token_header] = upstream.token_prefix + token.value
        length = self.request.content_length
        if length is not None:  # framing from what llhttp parsed (the app's header was dropped)
            headers["Content-Length"] = str(length)
        chunked = data is not None and length is None
        breaker = self.upstream.breaker
        try:
            self.response = await self.upstream.client.send(
                self.request.method, self.url, headers, data, chunked
            )
        except UpstreamFailure as exc:
            if exc.error in SILENT:  # no answer at all; never a verdict on the token
                breaker.failed(self.probe)
                self.probe = False
            raise
        if not breaker.clean:
            breaker.succeeded()
            self.probe = False
        return self.response

    def close(self) -> None:
        if self.probe:  # it ended before the upstream answered or stayed silent
            self.upstream.breaker.probe_abandoned()
            self.probe = False
        if self.response is not None:
            self.response.close()
        if self.body is not None:
            self.body.release()

    # -- the sidecar's own answers -------------------------------------------------------------

    def refuse(
        self, status: int, error: str, message: str, retry_after: float | None = None
    ) -> LocalAnswer:
        self.refused = error
        return error_response(
            status, error, message, upstream=self.upstream.name, retry_after=retry_after
        )

    def no_token(self, exc: NoToken) -> LocalAnswer:
        return self.refuse(503, "no_token", exc.reason, retry_after=exc.retry_after)

    def rate_limited(self, exc: RateLimited) -> LocalAnswer:
        limiter = self.upstream.limiter
        assert limiter is not None
        self.queued += exc.waited  # refused from the queue: the wait still shows in the log
        return self.refuse(
            429, "rate_limited",
            f"{self.upstream.name} allows {limiter.cfg.rps:g} request(s)/s; this one would "
            f"wait {exc.retry_after:.1f} s, over max_wait {limiter.cfg.max_wait:g} s",
            retry_after=exc.retry_after,
        )

    # -- once it is over -----------------------------------------------------------------------

    def account(self) -> None:
        """The access line and the request metrics, once per request, whatever happened."""
        request = self.request
        status = 499 if self.gone or request.status is None else request.status
        if self.broken:
            status = 502  # what the app got was a cut connection, not the upstream's status
        seconds = time.monotonic() - self.started
        bytes_in = self.body.bytes_read if self.body is not None else 0
        metrics = self.upstream.metrics
        metrics.request_done(request.method, status, seconds, bytes_in, self.bytes_out)
        if self.refused in _LOCAL_REJECTIONS:
            metrics.rejected(self.refused)
        over_budget = self.body is not None and self.body.over_budget
        if over_budget:
            metrics.replay_budget_exceeded.inc()
        access_log.request(
            self.request_id, self.upstream.name, request.method, self.path_qs.split("?", 1)[0],
            status, seconds, bytes_in, self.bytes_out, self.replayed, self.retried_429,
            self.queued, self.refused, self.broken, over_budget,
        )
