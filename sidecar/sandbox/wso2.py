"""A KISC-like WSO2 API Manager 2.x gateway for the sandbox (docs/protocols.md).

One TLS port that demands a client certificate from the sandbox CA on every connection,
exactly as KISC runs it, serving:

* ``POST /token`` and ``POST /revoke``: WSO2's key manager (``wso2_token``);
* ``/etsfo/1.0.0/messages/``: the KISC transport API (``kisc_messages``), behind the
  gateway's checks. Auth failures are WSO2 gateway faults (900901, 900902, ...) in JSON or
  APIM 2.x XML form (``wso2_faults``).

Request bodies are streamed and hashed; only message bodies meant for storage are kept,
up to ``max_message_bytes`` each. Fault injection and statistics are available both as
Python methods and over HTTP under ``/_sandbox/``, like the Keycloak emulator's; faults of
the gateway itself are forced with ``force_fault`` or ``/_sandbox/fault``.
"""

from __future__ import annotations

import re
import time
from typing import Any, ClassVar

from aiohttp import web

from sidecar.sandbox import controls
from sidecar.sandbox.emulator import LOOPBACK_HOSTS
from sidecar.sandbox.inbound import bearer_token, hash_body, request_summary
from sidecar.sandbox.kisc_messages import DEFAULT_MAX_MESSAGE_BYTES, MESSAGES_PATH, KiscMessages
from sidecar.sandbox.pki import IssuedCert, Pki
from sidecar.sandbox.servers import TlsServer
from sidecar.sandbox.wso2_faults import (
    FAULT_FORMATS,
    FAULTS,
    Fault,
    ForcedFaults,
    fault_format,
    fault_response,
    not_found_response,
)
from sidecar.sandbox.wso2_token import Wso2KeyManager

__all__ = [
    "FAULTS",
    "SANDBOX_SYSTEM_PREFIX",
    "Fault",
    "Wso2Gateway",
    "issue_kisc_client",
    "start_wso2",
]


class Wso2Gateway(Wso2KeyManager):
    """An in-memory WSO2 APIM 2.x gateway + key manager with the KISC messages API.

    Token rules are ``Wso2KeyManager``'s. Settings are plain attributes read on every
    call, so tests and users can change them at runtime (``gw.access_ttl = 2``,
    ``gw.fault_format = "xml"``). ``latency`` delays ``/token`` answers only.
    """

    messages_path = MESSAGES_PATH + "/"
    SETTINGS: ClassVar[dict[str, controls.Validator]] = {
        **Wso2KeyManager.SETTINGS,
        "fault_format": fault_format,
        "max_message_bytes": controls.integer,
    }

    def __init__(
        self,
        *,
        fault_format: str = "json",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        **key_manager: Any,
    ) -> None:
        """``key_manager``: ``Wso2KeyManager``'s keyword arguments (consumer key and secret,
        users, token lifetimes, ``timestamp_skew``, ``latency``)."""
        if fault_format not in FAULT_FORMATS:
            raise ValueError(f"fault_format must be one of {FAULT_FORMATS}")
        super().__init__(**key_manager)
        self.fault_format = fault_format
        self.max_message_bytes = max_message_bytes

        self._messages = KiscMessages()
        self._forced = ForcedFaults()
        self._requests = 0
        self._rejected = 0
        self.last_request: dict[str, Any] | None = None

        self._app.router.add_post("/_sandbox/fault", self._fault_handler)
        self._app.router.add_post("/_sandbox/deliver", self._deliver_handler)
        self.add_sandbox_routes()
        # Everything else is an API call through the gateway (unknown ones get 900906).
        self._app.router.add_route("*", "/{tail:.*}", self._api_handler)

    # -- controls --------------------------------------------------------------------------

    def force_fault(self, code: int | None, *, count: int = 1) -> None:
        """Answer the next ``count`` API calls (not /token) with WSO2 fault ``code``.

        ``code=None`` or ``count < 1`` clears a pending fault.
        """
        self._forced.force(code, count)

    def stats(self) -> dict[str, Any]:
        return {
            **self.token_stats(),
            "requests": self._requests,
            "rejected": self._rejected,
            "missing_idempotency": self._messages.missing_idempotency,
            "duplicate_posts": self._messages.duplicate_posts,
            "messages": len(self._messages),
            "unread": self._messages.unread,
            "forced_fault": self._forced.state(),
            "last_request": self.last_request,
        }

    def reset_stats(self) -> None:
        super().reset_stats()
        self._messages.reset_stats()
        self._requests = 0
        self._rejected = 0
        self.last_request = None

    def message(self, key: str) -> bytes | None:
        """The stored bytes of message ``key`` (posted or incoming), if any."""
        return self._messages.message(key)

    def deliver(self, body: bytes, key: str | None = None) -> str:
        """Add an unread incoming message for the bank; returns its key (``/messages/{id}``)."""
        return self._messages.deliver(body, key)

    # -- the API ---------------------------------------------------------------------------

    def _route(self, request: web.Request) -> tuple[str, str] | None:
        path = request.path
        if path in (MESSAGES_PATH, MESSAGES_PATH + "/"):
            if request.method in ("GET", "POST"):
                return ("messages", "")
            return None
        if path.startswith(MESSAGES_PATH + "/") and request.method == "GET":
            key = path[len(MESSAGES_PATH) + 1 :]
            key = key[:-1] if key.endswith("/") else key
            if key and "/" not in key:
                return ("message", key)
        return None

    async def _api_handler(self, request: web.Request) -> web.StreamResponse:
        self._requests += 1
        summary = request_summary(request, request_no=self._requests)
        try:
            response = await self._api(request, summary)
        except BaseException:
            summary["status"] = None
            raise
        finally:
            self.last_request = summary
        summary["status"] = response.status
        if response.status == 401:
            self._rejected += 1
        return response

    async def _fault(
        self, request: web.Request, summary: dict[str, Any], code: int
    ) -> web.Response:
        # The body is read to the end first, so the fault reaches the client.
        summary["body_sha256"], summary["body_length"] = await hash_body(request)
        return fault_response(code, self.fault_format)

    async def _api(self, request: web.Request, summary: dict[str, Any]) -> web.Response:
        route = self._route(request)
        if route is None:
            return await self._fault(request, summary, 900906)
        forced = self._forced.take()
        if forced is not None:
            summary["forced_fault"] = forced
            return await self._fault(request, summary, forced)
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            return await self._fault(request, summary, 900902)
        row = self._live_row(token, time.monotonic())
        if row is None:
            return await self._fault(request, summary, 900901)
        summary["token_user"] = row.username
        kind, key = route
        if kind == "messages" and request.method == "POST":
            return await self._messages.post(request, row.username, summary, self.max_message_bytes)
        summary["body_sha256"], summary["body_length"] = await hash_body(request)
        if kind == "messages":
            return self._messages.list_response()
        found = self._messages.read(key)
        if found is None:
            return not_found_response(key, self.fault_format)
        return web.Response(body=found, content_type="application/xml")

    # -- /_sandbox -------------------------------------------------------------------------

    async def _deliver_handler(self, request: web.Request) -> web.Response:
        """``POST /_sandbox/deliver`` with an XML body (``?key=`` optional): a new incoming
        message for the bank, listed by ``GET /messages/`` until it is read."""
        body = await request.read()
        if not body:
            return web.json_response({"error": "send the message as the body"}, status=400)
        key = self.deliver(body, request.query.get("key") or None)
        return web.json_response({"key": key, "unread": self._messages.unread})

    async def _fault_handler(self, request: web.Request) -> web.Response:
        try:
            raw_code = request.query.get("code", "")
            raw_count = request.query.get("count", "")
            code = int(raw_code) if raw_code and raw_code.lower() != "none" else None
            count = int(raw_count) if raw_count else 1
            self.force_fault(code, count=count)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"code": self._forced.code, "count": self._forced.remaining})


# The sandbox's stand-in for the system prefix of a KISC CN (KISC does not publish the
# real spelling): the certificate says "PS.bank-user", the portal user is "bank-user".
SANDBOX_SYSTEM_PREFIX = "PS."


def issue_kisc_client(
    pki: Pki, username: str = "bank-user", *, system_prefix: str = ""
) -> IssuedCert:
    """A KISC-style client certificate: RSA 2048, clientAuth, CN = the system prefix (if
    any) and the system user name; the portal user name is the CN without the prefix."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", username).lstrip(".") or "user"
    return pki.issue_client(f"kisc-client-{safe}", common_name=system_prefix + username)


async def start_wso2(pki: Pki, *, port: int = 0, **settings: Any) -> tuple[Wso2Gateway, TlsServer]:
    """Start a gateway on 127.0.0.1 (cert "kisc-gw") that requires a client certificate.

    ``settings`` are ``Wso2Gateway`` keyword arguments. Stop it with ``server.stop()``.
    """
    gateway = Wso2Gateway(**settings)
    cert = pki.issue_server("kisc-gw", LOOPBACK_HOSTS)
    server = TlsServer(
        gateway.app, pki.server_ssl_context(cert, require_client_cert=True), port=port
    )
    await server.start()
    return gateway, server
