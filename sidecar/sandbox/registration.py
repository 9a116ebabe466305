"""A MOEX online client registration API for the sandbox (docs/protocols.md).

``POST /client/v1/applications/`` takes a registration document (``application/xml``)
and answers 202 with the status URL in ``Location``; ``GET
/client/v1/applications/{DOC_DATE}/{DOC_NUM}`` reports the status, in the registration
file format (the document received, its status as root attributes). The test stand's
limits are enforced as MOEX publishes them, because a client must cope with them:

* at most one request per second per client (the token's ``azp``), else 429 with
  ``Retry-After: 30``. The rule is strict: a request less than ``min_interval`` after the
  previous request the limiter let through is refused. It covers every API request, GETs
  included, since MOEX limits "requests", not documents;
* 11:00-16:00 Moscow time only, else 503 (not registered, no ``Retry-After``). The clock
  is settable (``clock``, ``/_sandbox/clock``) and ``hours=None`` disables the check;
* at most 1 MB of body, else 413; the body must be well-formed XML, else 400.

Every request needs a live bearer token with scope ``client_registration`` (from the
Keycloak emulator's ``grant_type_moex=passport`` login). ``moex.start_moex_registration``
starts the whole MOEX stack: Passport, this API, and the IdP wiring between them. What a
received document is (fields, body, status) and the stand's hours are in
:mod:`.registration_parts`.
"""

from __future__ import annotations

import itertools
import time
import xml.etree.ElementTree as ET
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from datetime import time as dtime
from typing import Any, ClassVar
from urllib.parse import quote

from aiohttp import web

from sidecar.sandbox import controls
from sidecar.sandbox.emulator import MAX_EVENTS, Emulator
from sidecar.sandbox.inbound import bearer_token, header_map
from sidecar.sandbox.registration_parts import (
    Application,
    Body,
    doc_field,
    local_name,
    parse_hours,
    read_body,
    real_clock,
)

APPLICATIONS_PATH = "/client/v1/applications"
REGISTRATION_SCOPE = "client_registration"
REGISTRATION_CLIENT_ID = "moex_registration"
MSK = timezone(timedelta(hours=3), "MSK")  # Moscow has had no DST since 2014
DEFAULT_HOURS = (dtime(11, 0), dtime(16, 0))
MAX_BODY = 1024 * 1024  # "Maximum request payload size - 1 Mb"
RETRY_AFTER = 30  # seconds; MOEX: "Please try again in 30 seconds"

# The sandbox keeps documents in memory: the oldest are forgotten past these bounds.
_MAX_STORED_DOCUMENTS = 1000
_MAX_STORED_BYTES = 64 * 1024 * 1024
_INVALID_TOKEN = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
_INSUFFICIENT_SCOPE = {
    "WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{REGISTRATION_SCOPE}"'
}


class RegistrationApi(Emulator):
    """The registration API; ``validate_token`` returns a live token's claims or None.

    Settings are attributes read on every request: ``clock`` (aware datetimes), ``hours``
    (Moscow times, start inclusive, end exclusive; None = always open), ``min_interval``,
    ``max_body`` and ``processing_delay`` (seconds until a document reads "processed").
    Every API request is a controlled call; failures can be injected, but it never hangs.
    """

    SETTINGS: ClassVar[dict[str, controls.Validator]] = {
        "min_interval": controls.number,
        "processing_delay": controls.number,
        "max_body": controls.integer,
        "hours": lambda _name, value: parse_hours(value),
    }
    HANGS = False  # this emulator has never had a hang control

    def __init__(
        self,
        validate_token: Callable[[str], Mapping[str, Any] | None],
        *,
        clock: Callable[[], datetime] | None = None,
        hours: tuple[dtime, dtime] | None = DEFAULT_HOURS,
        min_interval: float = 1.0,
        max_body: int = MAX_BODY,
        processing_delay: float = 2.0,
    ) -> None:
        super().__init__()
        self._validate = validate_token
        self.clock: Callable[[], datetime] = clock or real_clock
        self.hours = hours
        self.min_interval = min_interval
        self.max_body = max_body
        self.processing_delay = processing_delay

        self._applications: OrderedDict[tuple[str, str], Application] = OrderedDict()
        self._stored_bytes = 0
        self._numbers = itertools.count(1)
        self._last_let_through: dict[str, float] = {}  # client -> time.monotonic()

        self.arrivals: deque[float] = deque(maxlen=MAX_EVENTS)
        self.last_request: dict[str, Any] | None = None
        self._counts: dict[str, int] = {}
        self.reset_stats()

        for path in (APPLICATIONS_PATH + "/", APPLICATIONS_PATH):
            self._app.router.add_post(path, self._post_handler)
        self._app.router.add_get(APPLICATIONS_PATH + "/{doc_date}/{doc_num}", self._get_handler)
        self._app.router.add_get("/_sandbox/clock", self._clock_handler)
        self._app.router.add_post("/_sandbox/clock", self._clock_handler)
        self.add_sandbox_routes()

    # -- controls --------------------------------------------------------------------------

    def set_clock(self, now: datetime | None) -> None:
        """Freeze the clock at ``now`` (an aware datetime); None goes back to real time."""
        if now is None:
            self.clock = real_clock
            return
        if now.tzinfo is None:
            raise ValueError("the clock needs an aware datetime (with a UTC offset)")
        self.clock = lambda: now

    def is_open(self) -> bool:
        """Whether the clock is inside the business hours (always, if ``hours`` is None)."""
        if self.hours is None:
            return True
        start, end = self.hours
        now = self.clock().astimezone(MSK).time()
        if start <= end:
            return start <= now < end
        return now >= start or now < end  # a window across midnight

    def document(self, doc_date: str, doc_num: str) -> bytes | None:
        """The stored bytes of an accepted document, if still kept."""
        found = self._applications.get((doc_date, doc_num))
        return found.body if found is not None else None

    def stats(self) -> dict[str, Any]:
        return {
            **self._counts,
            "arrivals": list(self.arrivals),
            "documents": len(self._applications),
            "last_request": self.last_request,
        }

    def reset_stats(self) -> None:
        super().reset_stats()
        self.arrivals.clear()
        self.last_request = None
        self._counts = dict.fromkeys(
            (
                "requests",
                "accepted",
                "status_requests",
                "rate_limited",
                "outside_hours",
                "bad_xml",
                "bad_content_type",
                "duplicates",
                "too_large",
                "unauthorized",
                "forbidden",
                "injected",
            ),
            0,
        )

    def settings(self) -> dict[str, Any]:
        hours = self.hours
        return {
            "min_interval": self.min_interval,
            "processing_delay": self.processing_delay,
            "max_body": self.max_body,
            "hours": [t.strftime("%H:%M") for t in hours] if hours is not None else None,
        }

    # -- request handling ------------------------------------------------------------------

    @staticmethod
    def _error(
        status: int, error: str, detail: str, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        return web.json_response({"error": error, "detail": detail}, status=status, headers=headers)

    def answer_failure(self, status: int) -> web.Response:
        self._counts["injected"] += 1
        error = "server_error" if status >= 500 else "invalid_request"
        return self._error(status, error, controls.failure_text(status))

    async def _gate(
        self, request: web.Request, summary: dict[str, Any]
    ) -> tuple[web.Response | None, str]:
        """The checks every API request passes, in gateway order; returns (refusal, client).

        A refusal is returned with the body already drained.
        """
        refusal = self._controls.take_failure(self.answer_failure)
        client = ""
        if refusal is None:
            token = bearer_token(request.headers.get("Authorization"))
            claims = self._validate(token) if token is not None else None
            if claims is None:
                self._counts["unauthorized"] += 1
                refusal = web.json_response(
                    {
                        "error": "invalid_token",
                        "error_description": "missing, invalid or expired access token",
                    },
                    status=401,
                    headers=_INVALID_TOKEN,
                )
            else:
                client = str(claims.get("azp") or claims.get("sub") or "")
                summary["token_azp"] = claims.get("azp")
                summary["token_sub"] = claims.get("sub")
                refusal = self._authorise(claims, client)
        if refusal is not None:
            self._record(summary, await read_body(request, None))
        return refusal, client

    def _authorise(self, claims: Mapping[str, Any], client: str) -> web.Response | None:
        if REGISTRATION_SCOPE not in str(claims.get("scope", "")).split():
            self._counts["forbidden"] += 1
            return web.json_response(
                {
                    "error": "insufficient_scope",
                    "error_description": f"the token lacks scope {REGISTRATION_SCOPE}",
                },
                status=403,
                headers=_INSUFFICIENT_SCOPE,
            )
        now = time.monotonic()
        last = self._last_let_through.get(client)
        if last is not None and now - last < self.min_interval:
            # Refused requests do not move the window: only the last one let through counts.
            self._counts["rate_limited"] += 1
            return self._error(
                429,
                "too_many_requests",
                f"at most 1 request per {self.min_interval:g} s; retry after {RETRY_AFTER} s",
                {"Retry-After": str(RETRY_AFTER)},
            )
        self._last_let_through[client] = now
        if not self.is_open():
            self._counts["outside_hours"] += 1
            start, end = self.hours or DEFAULT_HOURS
            return self._error(
                503,
                "service_unavailable",
                f"The client registration service works {start:%H:%M}-{end:%H:%M} MSK; "
                "the request was not registered",
            )
        return None

    def _record(self, summary: dict[str, Any], body: Body) -> None:
        summary["body_sha256"] = body.sha256
        summary["body_length"] = body.length
        summary["body_complete"] = body.sha256 is not None

    def _summary(self, request: web.Request) -> dict[str, Any]:
        return {
            "method": request.method,
            "path": request.path,
            "headers": header_map(request),
            "token_azp": None,
            "token_sub": None,
        }

    async def _post_handler(self, request: web.Request) -> web.Response:
        self.arrivals.append(time.monotonic())
        self._counts["requests"] += 1
        summary = self._summary(request)
        self.last_request = summary
        response = await self._post(request, summary)
        summary["status"] = response.status
        return response

    async def _post(self, request: web.Request, summary: dict[str, Any]) -> web.Response:
        refusal, client = await self._gate(request, summary)
        if refusal is not None:
            return refusal
        if request.content_type != "application/xml":
            self._record(summary, await read_body(request, None))
            self._counts["bad_content_type"] += 1
            return self._error(
                400,
                "invalid_request",
                f"Content-Type must be application/xml, got {request.content_type!r}",
            )
        body = await read_body(request, self.max_body)
        self._record(summary, body)
        if body.data is None:
            self._counts["too_large"] += 1
            return self._error(
                413, "payload_too_large", f"the request body exceeds {self.max_body} bytes"
            )
        try:
            # expat (2.4+) refuses entity-expansion bombs and never fetches external entities.
            root = ET.fromstring(body.data)
        except ET.ParseError as exc:
            self._counts["bad_xml"] += 1
            return self._error(
                400, "invalid_request", f"the document is not well-formed XML: {exc}"
            )

        received_at = self.clock().astimezone(MSK)
        doc_date = doc_field(root, "doc_date") or received_at.date().isoformat()
        doc_num = doc_field(root, "doc_num")
        if doc_num is None:
            doc_num = str(next(self._numbers))
            while (doc_date, doc_num) in self._applications:
                doc_num = str(next(self._numbers))
        key = (doc_date, doc_num)
        if key in self._applications:
            # An assumption: a registry keyed by document number refuses a repeated one.
            self._counts["duplicates"] += 1
            return self._error(
                400, "invalid_request", f"document {doc_date}/{doc_num} is already registered"
            )
        self._store(
            Application(
                doc_date=doc_date,
                doc_num=doc_num,
                client_id=client,
                root_tag=local_name(root.tag),
                body=body.data,
                sha256=str(body.sha256),
                received_at=received_at,
                accepted_at=time.monotonic(),
            )
        )
        self._counts["accepted"] += 1
        location = f"{APPLICATIONS_PATH}/{quote(doc_date, safe='')}/{quote(doc_num, safe='')}"
        summary["location"] = location
        return web.Response(status=202, headers={"Location": location})

    def _store(self, application: Application) -> None:
        self._applications[(application.doc_date, application.doc_num)] = application
        self._stored_bytes += len(application.body)
        while len(self._applications) > 1 and (
            len(self._applications) > _MAX_STORED_DOCUMENTS
            or self._stored_bytes > _MAX_STORED_BYTES
        ):
            _, oldest = self._applications.popitem(last=False)
            self._stored_bytes -= len(oldest.body)

    async def _get_handler(self, request: web.Request) -> web.Response:
        self._counts["status_requests"] += 1
        summary = self._summary(request)
        self.last_request = summary
        refusal, _ = await self._gate(request, summary)
        if refusal is None:
            self._record(summary, await read_body(request, None))
            key = (request.match_info["doc_date"], request.match_info["doc_num"])
            found = self._applications.get(key)
            if found is None:
                response = self._error(404, "not_found", f"no document {key[0]}/{key[1]}")
            else:
                # In the registration file format, as MOEX documents: XML, not JSON.
                response = web.Response(
                    body=found.status_xml(self.processing_delay),
                    content_type="application/xml",
                    charset="utf-8",
                )
        else:
            response = refusal
        summary["status"] = response.status
        return response

    # -- /_sandbox -------------------------------------------------------------------------

    async def _clock_handler(self, request: web.Request) -> web.Response:
        """GET shows the clock; POST ``{"now": "<ISO 8601 with offset>"}`` freezes it there,
        ``{"now": null}`` goes back to real time."""
        if request.method == "POST":
            try:
                body = await request.json()
                if not isinstance(body, dict) or "now" not in body:
                    raise ValueError('expected {"now": "<ISO 8601>"} or {"now": null}')
                raw = body["now"]
                if raw is not None and not isinstance(raw, str):
                    raise ValueError("now must be an ISO 8601 string or null")
                self.set_clock(datetime.fromisoformat(raw) if raw is not None else None)
            except ValueError as exc:  # json.JSONDecodeError is a ValueError too
                return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(
            {
                "now": self.clock().astimezone(MSK).isoformat(),
                "fixed": self.clock is not real_clock,
                "open": self.is_open(),
            }
        )
