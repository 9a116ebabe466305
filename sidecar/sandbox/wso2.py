"""A KISC-like WSO2 API Manager 2.x gateway for the sandbox (PROTOCOLS sections 0 and 6).

One TLS port that demands a client certificate from the sandbox CA on every connection,
exactly as KISC runs it, serving:

* ``POST /token``: the password and refresh_token grants with opaque UUID tokens and
  WSO2's token semantics. A repeated password grant hands back the *same* still-valid
  token pair with less ``expires_in`` left; refresh tokens are single-use and rotate
  (RenewRefreshTokenForRefreshGrant=true); the password grant also checks that the TLS
  client certificate's CN is the user name, as KISC requires.
* ``POST /revoke``: RFC 7009 revocation as WSO2 implements it.
* ``/etsfo/1.0.0/messages/``: the KISC transport API. ``POST`` stores an XML message
  under its ``x-idempotency-key`` (202), ``GET`` lists messages in the SOAP-wrapped
  data-service format and ``GET /messages/{id}`` returns one message. Auth failures are
  WSO2 gateway faults (900901, 900902, ...) in JSON or APIM 2.x XML form.

Request bodies are streamed and hashed; only message bodies meant for storage are kept,
up to ``max_message_bytes`` each. Fault injection and statistics are available both as
Python methods and over HTTP under ``/_sandbox/``, like the Keycloak emulator's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
import re
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web
from cryptography.x509.oid import NameOID

from sidecar.sandbox import controls
from sidecar.sandbox.keycloak import OAuthError, _injected_failure, _shutting_down
from sidecar.sandbox.ntb import _bearer_token, _client_cert, _headers, peer_certificate
from sidecar.sandbox.pki import IssuedCert, Pki
from sidecar.sandbox.servers import TlsServer

__all__ = ["FAULTS", "Fault", "Wso2Gateway", "issue_kisc_client", "start_wso2"]

_DEFAULT_USERS: dict[str, str] = {"bank-user": "bank-password"}
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
_MAX_EVENTS = 10_000  # keep the issued-token log bounded during long load runs
_PRUNE_INTERVAL = 1.0  # seconds between sweeps of dead token rows
_SUPPORTED_GRANTS = ("password", "refresh_token")
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_FAULT_FORMATS = ("json", "xml")


def _fault_format(name: str, value: Any) -> str:
    if value not in _FAULT_FORMATS:
        raise ValueError(f"{name} must be one of {_FAULT_FORMATS}")
    return str(value)


_SETTINGS: dict[str, controls.Validator] = {
    "access_ttl": controls.number,
    "refresh_ttl": controls.number,
    "timestamp_skew": controls.number,
    "latency": controls.number,
    "fault_format": _fault_format,
    "max_message_bytes": controls.integer,
}

# The API as KISC publishes it.
API_CONTEXT = "/etsfo/1.0.0"
API_VERSION = "1.0.0"
MESSAGES_PATH = f"{API_CONTEXT}/messages"

# Storage bounds: the sandbox keeps message bodies in memory.
DEFAULT_MAX_MESSAGE_BYTES = 10 * 1024 * 1024
MAX_STORED_MESSAGES = 1000
MAX_STORED_BYTES = 128 * 1024 * 1024
_MAX_REMEMBERED_KEYS = 100_000
_SNIFF_BYTES = 64 * 1024  # how much of a message is searched for its header fields

_INVALID_TOKEN_CHALLENGE = (
    'OAuth2 realm="WSO2 API Manager", error="invalid_token", '
    'error_description="The access token expired"'
)
_SECURITY_NS = ("ams", "http://wso2.org/apimanager/security")
_THROTTLING_NS = ("amt", "http://wso2.org/apimanager/throttling")
_ACCESS_FAILURE = f"Access failure for API: {API_CONTEXT}, version: {API_VERSION}"
_THROTTLED_OUT = "Message throttled out"
_OVER_QUOTA = "You have exceeded your quota"
_DATASERVICE_NS = "http://ws.wso2.org/dataservice"


@dataclass(frozen=True)
class Fault:
    """A WSO2 gateway fault: its HTTP status, message and description."""

    code: int
    status: int
    message: str
    description: str
    throttling: bool = False  # throttle faults use their own XML namespace


def _status_fault(code: int, status: int, message: str, suffix: str = "") -> Fault:
    description = f"{_ACCESS_FAILURE} status: ({code}) - {message}{suffix}"
    return Fault(code, status, message, description)


def _throttle_fault(code: int) -> Fault:
    return Fault(code, 429, _THROTTLED_OUT, _OVER_QUOTA, throttling=True)


# Messages and descriptions follow carbon-apimgt's APISecurityConstants and
# APIThrottleConstants; the gateway sends every 401 with the same OAuth2 challenge.
FAULTS: dict[int, Fault] = {
    900900: _status_fault(900900, 500, "Unclassified Authentication Failure"),
    900901: _status_fault(
        900901, 401, "Invalid Credentials", ". Make sure you have given the correct access token"
    ),
    900902: Fault(
        900902,
        401,
        "Missing Credentials",
        "Required OAuth credentials not provided. Make sure your API invocation call has a "
        "header: 'Authorization : Bearer ACCESS_TOKEN'",
    ),
    900903: _status_fault(
        900903, 401, "Access Token Expired", ". Renew the access token and try again"
    ),
    900904: _status_fault(
        900904, 401, "Access Token Inactive", ". Generate a new access token and try again"
    ),
    900906: Fault(
        900906,
        404,
        "No matching resource found in the API for the given request",
        f"{_ACCESS_FAILURE}. Check the API documentation and add a proper REST resource "
        "path to the invocation URL",
    ),
    900908: _status_fault(900908, 403, "Resource forbidden"),
    900909: _status_fault(900909, 403, "The subscription to the API is inactive"),
    900910: _status_fault(
        900910, 403, "The access token does not allow you to access the requested resource"
    ),
    **{code: _throttle_fault(code) for code in (900800, 900801, 900802, 900803, 900804)},
    # A blocking condition is not a quota: WSO2 answers it with 403 "Message blocked".
    900805: Fault(
        900805,
        403,
        "Message blocked",
        "You have been blocked from accessing the resource",
        throttling=True,
    ),
    **{code: _throttle_fault(code) for code in (900806, 900807)},
}

_ACTIVE = "ACTIVE"
_REFRESHED = "REFRESHED"  # its refresh token was used: the row is dead
_REVOKED = "REVOKED"  # superseded by a new password grant, or revoked via /revoke


@dataclass
class _TokenRow:
    """One row of WSO2's access-token table: an access token and its refresh token."""

    access_token: str
    refresh_token: str
    consumer_key: str
    username: str
    scope: str
    access_expires_at: float  # time.monotonic(); sub-second precision
    refresh_expires_at: float
    state: str = _ACTIVE

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.consumer_key, self.username, _scope_key(self.scope))


@dataclass
class _Message:
    key: str
    body: bytes
    message_type: str
    sender: str
    interaction_id: str
    content_type: str = "application/xml"
    inbound: bool = False  # seeded by the sandbox rather than posted by a client


@dataclass
class _Body:
    sha256: str
    length: int
    data: bytes | None  # None when not kept (not asked for, or over the limit)


def _normalize_scope(scope: str | None) -> str:
    """Requested scopes without duplicates; WSO2 grants ``default`` when none is asked."""
    scopes = list(dict.fromkeys((scope or "").split()))
    return " ".join(scopes) if scopes else "default"


def _scope_key(scope: str) -> str:
    # WSO2 matches an existing token by a hash of the sorted scope set.
    return " ".join(sorted(set(scope.split())))


def _peer_common_name(request: web.Request) -> str | None:
    cert = peer_certificate(request)
    if cert is None:
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = names[0].value if names else None
    return value if isinstance(value, str) else None


async def _consume(request: web.Request, keep_limit: int | None = None) -> _Body:
    """Read the whole body in chunks, hashing it; keep it only if asked and small enough.

    The body is always read to the end before answering, so error answers reach the
    client instead of a connection reset.
    """
    digest = hashlib.sha256()
    length = 0
    chunks: list[bytes] | None = [] if keep_limit is not None else None
    while chunk := await request.content.readany():
        digest.update(chunk)
        length += len(chunk)
        if chunks is not None:
            if keep_limit is not None and length > keep_limit:
                chunks = None  # over the limit: stop keeping, carry on hashing
            else:
                chunks.append(chunk)
    return _Body(digest.hexdigest(), length, b"".join(chunks) if chunks is not None else None)


_MSG_DEF_RE = re.compile(rb"<(?:[\w.-]+:)?MsgDefIdr?>\s*([^<\s]+)\s*<")
_SENDER_RE = re.compile(
    rb"<(?:[\w.-]+:)?Fr>.*?<(?:[\w.-]+:)?Id>\s*([^<\s]+)\s*<.*?"
    rb"<(?:[\w.-]+:)?Prtry>\s*([^<\s]+)\s*<",
    re.DOTALL,
)


def _sniff(body: bytes, fallback_sender: str) -> tuple[str, str]:
    """The ISO 20022 message type and sender from a business header, when readable.

    Encrypted envelopes carry neither in clear text: the type is then left empty and
    the sender is the KISC user who posted the message.
    """
    head = body[:_SNIFF_BYTES]
    found = _MSG_DEF_RE.search(head)
    message_type = found.group(1).decode("utf-8", "replace") if found else ""
    sender = _SENDER_RE.search(head)
    if sender:
        prtry = sender.group(2).decode("utf-8", "replace")
        ident = sender.group(1).decode("utf-8", "replace")
        return message_type, f"{prtry}.{ident}"
    return message_type, fallback_sender


def _element(name: str, value: str) -> str:
    return f"<{name}>{escape(value)}</{name}>" if value else f"<{name} />"


def _content_type(raw: str | None) -> str:
    """The posted media type as KISC lists it; the seed's ``application\\xml`` becomes xml."""
    media = (raw or "").split(";", 1)[0].strip().lower()
    if re.fullmatch(r"[\w.+-]+/[\w.+-]+", media):
        return media
    return "application/xml"


def _seed_message(key: str, to: str, message_type: str, document: str) -> _Message:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<Data>\n"
        "<Envelope>\n"
        '<AppHdr xmlns="urn:iso:std:iso:20022:tech:xsd:head.001.001.01">\n'
        "<Fr><FIId><FinInstnId><Othr><Id>SGROSS00</Id><SchmeNm><Prtry>KZGRO</Prtry>"
        "</SchmeNm></Othr></FinInstnId></FIId></Fr>\n"
        f"<To><FIId><FinInstnId><Othr><Id>{to}</Id><SchmeNm><Prtry>KZGRO</Prtry>"
        "</SchmeNm></Othr></FinInstnId></FIId></To>\n"
        f"<BizMsgIdr>{key}</BizMsgIdr>\n"
        f"<MsgDefIdr>{message_type}</MsgDefIdr>\n"
        "<CreDt>2021-05-11T18:18:29+06:00</CreDt>\n"
        "<Prty>NORM</Prty>\n"
        "<Sgntr />\n"
        "</AppHdr>\n"
        f"{document}"
        "</Envelope>\n"
        "</Data>\n"
    ).encode()
    return _Message(
        key=key,
        body=body,
        message_type=message_type,
        sender="KZGRO.SGROSS00",
        interaction_id="",
        inbound=True,
    )


def _seeded_messages() -> list[_Message]:
    """The two inbound messages of the KISC seed (typos fixed), so the list is never empty."""
    camt = (
        '<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.054.001.07">\n'
        "<BkToCstmrDbtCdtNtfctn>\n"
        "<GrpHdr><MsgId>GRO2021051114103</MsgId>"
        "<CreDtTm>2021-05-11T18:18:29+06:00</CreDtTm></GrpHdr>\n"
        "<Ntfctn><Id>GRO2021051114103</Id>\n"
        "<Acct><Id><IBAN>KZ86319KZT1001300234</IBAN></Id>"
        "<Svcr><FinInstnId><BICFI>NBRKKZKX</BICFI></FinInstnId></Svcr></Acct>\n"
        '<Ntry><Amt Ccy="KZT">2450</Amt><CdtDbtInd>CRDT</CdtDbtInd>'
        "<Sts><Cd>BOOK</Cd></Sts><BkTxCd><Prtry><Cd>01</Cd></Prtry></BkTxCd>\n"
        "<NtryDtls><Btch><MsgId>MsgId_4d5e65d-77eb_1</MsgId><NbOfTxS>2</NbOfTxS>"
        '<TtlAmt Ccy="KZT">2450</TtlAmt></Btch></NtryDtls></Ntry>\n'
        "</Ntfctn>\n"
        "</BkToCstmrDbtCdtNtfctn>\n"
        "</Document>\n"
    )
    pacs = (
        '<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pacs.002.001.11">\n'
        "<FIToFIPmtStsRpt>\n"
        "<GrpHdr><MsgId>GRO2021051114106</MsgId>"
        "<CreDtTm>2021-05-11T18:18:28+06:00</CreDtTm></GrpHdr>\n"
        "<OrgnlGrpInfAndSts><OrgnlMsgId>MsgId_4d5e65d-77eb_1</OrgnlMsgId>"
        "<OrgnlMsgNmId>pacs.008.001.08</OrgnlMsgNmId>"
        "<OrgnlCreDtTm>2021-04-22T14:01:44+06:00</OrgnlCreDtTm>"
        "<GrpSts>ACSP</GrpSts></OrgnlGrpInfAndSts>\n"
        "<TxInfAndSts><OrgnlEndToEndId>EToEId_4d5e65d-77eb_1</OrgnlEndToEndId>"
        "<OrgnlTxId>MsgId_4d5e65d-77eb_1</OrgnlTxId></TxInfAndSts>\n"
        "</FIToFIPmtStsRpt>\n"
        "</Document>\n"
    )
    return [
        _seed_message("GRO2021051114103", "K9000666", "camt.054.001.07", camt),
        _seed_message("GRO2021051114106", "K0000014", "pacs.002.001.11", pacs),
    ]


class Wso2Gateway:
    """An in-memory WSO2 APIM 2.x gateway + key manager with the KISC messages API.

    Token rules follow WSO2 Identity Server's grant handlers. There is one live token
    row per consumer key, user and scope. A password grant returns that row's pair
    while both tokens have more than 1 s left (after ``timestamp_skew``), with the
    smaller ``expires_in``; otherwise it issues a new access token and keeps the old
    refresh token if that outlives the new access token. A refresh grant uses up the
    refresh token and issues a new pair.

    Settings are plain attributes read on every call, so tests and users can change
    them at runtime (``gw.access_ttl = 2``, ``gw.fault_format = "xml"``). ``latency``
    delays ``/token`` answers only.
    """

    token_path = "/token"
    revoke_path = "/revoke"
    messages_path = MESSAGES_PATH + "/"

    def __init__(
        self,
        *,
        consumer_key: str = "kisc-consumer-key",
        consumer_secret: str = "kisc-consumer-secret",
        users: Mapping[str, str] | None = None,
        access_ttl: float = 3600,
        refresh_ttl: float = 86400,
        timestamp_skew: float = 0.0,
        latency: float = 0.0,
        fault_format: str = "json",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if fault_format not in _FAULT_FORMATS:
            raise ValueError(f"fault_format must be one of {_FAULT_FORMATS}")
        self.consumer_key = consumer_key
        self.consumer_secret = consumer_secret
        self.users: dict[str, str] = dict(_DEFAULT_USERS if users is None else users)
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl
        # WSO2 subtracts its TimestampSkew (identity.xml) from the time left when deciding
        # whether to hand back an existing token; 0 here unless a test wants it.
        self.timestamp_skew = timestamp_skew
        self.latency = latency
        self.fault_format = fault_format
        self.max_message_bytes = max_message_bytes

        # Every token handed out (bounded), so a test can check none of them leaked anywhere.
        self.issued: deque[str] = deque(maxlen=_MAX_EVENTS)
        self._by_access: dict[str, _TokenRow] = {}
        self._by_refresh: dict[str, _TokenRow] = {}
        self._current: dict[tuple[str, str, str], _TokenRow] = {}
        self._next_prune = 0.0

        self._messages: OrderedDict[str, _Message] = OrderedDict(
            (m.key, m) for m in _seeded_messages()
        )
        self._stored_bytes = 0  # bodies of posted (not seeded) messages
        self._seen_keys: OrderedDict[str, None] = OrderedDict()

        self._controls = controls.FaultControls()
        self._fault_code: int | None = None
        self._fault_remaining = 0

        self._calls = 0
        self._by_grant: Counter[str] = Counter()
        self._refresh_reuse = 0
        self._revocations = 0
        self._requests = 0
        self._rejected = 0
        self._missing_idempotency = 0
        self._duplicate_posts = 0
        self.last_request: dict[str, Any] | None = None

        self._app = web.Application()
        router = self._app.router
        router.add_post(self.token_path, self._token_handler)
        router.add_post(self.revoke_path, self._revoke_handler)
        router.add_post("/_sandbox/expire", self._expire_handler)
        router.add_post("/_sandbox/fault", self._fault_handler)
        controls.add_sandbox_routes(self._app, self, self._controls, _SETTINGS)
        # Everything else is an API call through the gateway (unknown ones get 900906).
        router.add_route("*", "/{tail:.*}", self._api_handler)

    @property
    def app(self) -> web.Application:
        return self._app

    @property
    def controls(self) -> controls.FaultControls:
        """Fault injection for the ``/token`` calls from Python (``fail_with``,
        ``fail_randomly``, ``hang``, ``injected``); ``/_sandbox/fail`` over HTTP."""
        return self._controls

    # -- controls --------------------------------------------------------------------------

    def expire_tokens(self) -> int:
        """Expire every access token now (refresh tokens stay usable); returns how many."""
        now = time.monotonic()
        count = 0
        for row in self._by_access.values():
            if row.state == _ACTIVE and now < row.access_expires_at:
                count += 1
            row.access_expires_at = min(row.access_expires_at, now)
        return count

    def force_fault(self, code: int | None, *, count: int = 1) -> None:
        """Answer the next ``count`` API calls (not /token) with WSO2 fault ``code``.

        ``code=None`` or ``count < 1`` clears a pending fault.
        """
        if code is not None and code not in FAULTS:
            raise ValueError(f"unknown WSO2 fault code {code}; known: {sorted(FAULTS)}")
        if code is None or count < 1:
            self._fault_code, self._fault_remaining = None, 0
        else:
            self._fault_code, self._fault_remaining = code, count

    def fail_token_with(self, status: int | None, count: int | None = None) -> None:
        """Answer the next ``count`` /token calls (all if None) with HTTP ``status``.

        ``status=None`` (or ``count=0``) clears the failure.
        """
        self._controls.fail_with(status, count)

    def hang(self, enabled: bool) -> None:
        """While enabled, /token calls wait and never answer (until disabled or shutdown)."""
        self._controls.hang(enabled)

    def stats(self) -> dict[str, Any]:
        return {
            "calls": self._calls,
            "by_grant": dict(self._by_grant),
            "max_concurrent": self._controls.max_concurrent,
            "in_flight": self._controls.in_flight,
            "refresh_reuse": self._refresh_reuse,
            "revocations": self._revocations,
            "events": [dict(e) for e in self._controls.events],
            "requests": self._requests,
            "rejected": self._rejected,
            "missing_idempotency": self._missing_idempotency,
            "duplicate_posts": self._duplicate_posts,
            "messages": len(self._messages),
            "forced_fault": (
                {"code": self._fault_code, "remaining": self._fault_remaining}
                if self._fault_code is not None
                else None
            ),
            "last_request": self.last_request,
        }

    def reset_stats(self) -> None:
        self._calls = 0
        self._by_grant.clear()
        self._controls.reset_stats()
        self._refresh_reuse = 0
        self._revocations = 0
        self._requests = 0
        self._rejected = 0
        self._missing_idempotency = 0
        self._duplicate_posts = 0
        self.last_request = None

    def settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _SETTINGS}

    def is_access_token_valid(self, token: str) -> bool:
        return self._live_row(token, time.monotonic()) is not None

    def message(self, key: str) -> bytes | None:
        """The stored bytes of message ``key`` (posted or seeded), if any."""
        found = self._messages.get(key)
        return found.body if found is not None else None

    # -- token rows ------------------------------------------------------------------------

    def _live_row(self, access_token: str, now: float) -> _TokenRow | None:
        row = self._by_access.get(access_token)
        if row is None or row.state != _ACTIVE or now >= row.access_expires_at:
            return None
        return row

    def _prune(self, now: float) -> None:
        """Forget rows whose tokens are all past expiry, so long runs stay bounded."""
        if now < self._next_prune:
            return
        self._next_prune = now + _PRUNE_INTERVAL
        dead = [
            row
            for row in self._by_access.values()
            if now >= row.access_expires_at and now >= row.refresh_expires_at
        ]
        for row in dead:
            # A refresh token carried over to a newer row must stay reachable.
            if self._by_access.get(row.access_token) is row:
                del self._by_access[row.access_token]
            if self._by_refresh.get(row.refresh_token) is row:
                del self._by_refresh[row.refresh_token]
            if self._current.get(row.identity) is row:
                del self._current[row.identity]

    def _time_left(self, expires_at: float, now: float) -> float:
        """WSO2's remaining validity: minus the timestamp skew, and 0 unless over 1 s."""
        left = expires_at - now - self.timestamp_skew
        return left if left > 1.0 else 0.0

    def _new_row(
        self,
        consumer_key: str,
        username: str,
        scope: str,
        now: float,
        *,
        keep_refresh_of: _TokenRow | None = None,
    ) -> _TokenRow:
        previous = self._current.get((consumer_key, username, _scope_key(scope)))
        if previous is not None and previous.state == _ACTIVE:
            previous.state = _REVOKED  # one ACTIVE row per consumer, user and scope
        row = _TokenRow(
            access_token=str(uuid.uuid4()),
            refresh_token=str(uuid.uuid4()),
            consumer_key=consumer_key,
            username=username,
            scope=scope,
            access_expires_at=now + max(0.0, float(self.access_ttl)),
            refresh_expires_at=now + max(0.0, float(self.refresh_ttl)),
        )
        if keep_refresh_of is not None:
            # The new access token inherits the old, still-valid refresh token as is.
            row.refresh_token = keep_refresh_of.refresh_token
            row.refresh_expires_at = keep_refresh_of.refresh_expires_at
        self._by_access[row.access_token] = row
        self._by_refresh[row.refresh_token] = row
        self._current[row.identity] = row
        return row

    def _token_body(self, row: _TokenRow, seconds_left: float) -> dict[str, Any]:
        # Whole seconds, rounded down as WSO2 does (milliseconds / 1000).
        expires_in = max(0, math.floor(seconds_left))
        self.issued.extend((row.access_token, row.refresh_token))
        return {
            "access_token": row.access_token,
            "refresh_token": row.refresh_token,
            "scope": row.scope,
            "token_type": "Bearer",
            "expires_in": expires_in,
        }

    # -- grants ----------------------------------------------------------------------------

    def _authenticate_client(self, request: web.Request, form: Mapping[str, str]) -> str:
        """The consumer key, from HTTP Basic (or client_id/client_secret form fields)."""
        bad_client = OAuthError(401, "invalid_client", "Client Authentication failed.")
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, value = header.strip().partition(" ")
            if scheme.lower() != "basic":
                raise bad_client
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                raise bad_client from None
            key, sep, secret = decoded.partition(":")
            if not sep:
                raise bad_client
        else:
            key = form.get("client_id", "")
            secret = form.get("client_secret", "")
        key_ok = hmac.compare_digest(key.encode(), self.consumer_key.encode())
        secret_ok = hmac.compare_digest(secret.encode(), self.consumer_secret.encode())
        if not (key and key_ok and secret_ok):
            raise bad_client
        return key

    def _password_grant(
        self, request: web.Request, form: Mapping[str, str], consumer_key: str
    ) -> dict[str, Any]:
        username = form["username"]
        password = form["password"]
        # KISC: the client certificate's CN is the system user name.
        if _peer_common_name(request) != username:
            raise OAuthError(400, "invalid_grant", "Certificate CN does not match the user")
        expected = self.users.get(username)
        if expected is None or not hmac.compare_digest(password.encode(), expected.encode()):
            raise OAuthError(400, "invalid_grant", f"Authentication failed for {username}")
        scope = _normalize_scope(form.get("scope"))
        now = time.monotonic()
        self._prune(now)
        existing = self._current.get((consumer_key, username, _scope_key(scope)))
        keep_refresh = False
        if existing is not None and existing.state == _ACTIVE:
            access_left = self._time_left(existing.access_expires_at, now)
            refresh_left = self._time_left(existing.refresh_expires_at, now)
            if access_left > 0 and refresh_left > 0:
                # WSO2 hands back the still-valid pair, with less time left.
                return self._token_body(existing, access_left)
            # A new access token; the refresh token survives if it outlives the new one.
            keep_refresh = refresh_left > float(self.access_ttl)
        row = self._new_row(
            consumer_key, username, scope, now, keep_refresh_of=existing if keep_refresh else None
        )
        return self._token_body(row, float(self.access_ttl))

    def _refresh_grant(self, form: Mapping[str, str], consumer_key: str) -> dict[str, Any]:
        not_found = OAuthError(400, "invalid_grant", "Persisted access token data not found")
        now = time.monotonic()
        self._prune(now)
        row = self._by_refresh.get(form["refresh_token"])
        if row is None or row.consumer_key != consumer_key:
            raise not_found
        if row.state == _REFRESHED:
            self._refresh_reuse += 1
            raise not_found
        if row.state != _ACTIVE or now >= row.refresh_expires_at:
            raise not_found
        # RenewRefreshTokenForRefreshGrant=true: the old pair dies, a new one is issued.
        row.state = _REFRESHED
        new = self._new_row(consumer_key, row.username, row.scope, now)
        return self._token_body(new, float(self.access_ttl))

    def _grant(self, request: web.Request, form: Mapping[str, str]) -> web.Response:
        try:
            # Like WSO2 (Oltu), the request is validated before the client is authenticated.
            grant = form.get("grant_type")
            if not grant:
                raise OAuthError(400, "invalid_request", "Missing grant_type parameter value")
            if grant not in _SUPPORTED_GRANTS:
                raise OAuthError(400, "unsupported_grant_type", "Unsupported grant_type value")
            required = ("username", "password") if grant == "password" else ("refresh_token",)
            missing = [name for name in required if not form.get(name)]
            if missing:
                raise OAuthError(400, "invalid_request", f"Missing parameters: {' '.join(missing)}")
            consumer_key = self._authenticate_client(request, form)
            if grant == "password":
                body = self._password_grant(request, form, consumer_key)
            else:
                body = self._refresh_grant(form, consumer_key)
        except OAuthError as exc:
            return exc.response()
        return web.json_response(body, headers=_NO_STORE)

    # -- faults ----------------------------------------------------------------------------

    def _fault_response(self, code: int) -> web.Response:
        fault = FAULTS[code]
        headers = {"WWW-Authenticate": _INVALID_TOKEN_CHALLENGE} if fault.status == 401 else {}
        next_access = None
        if fault.throttling and code != 900805:
            next_minute = (int(time.time()) // 60 + 1) * 60
            next_access = time.strftime("%Y-%b-%d %H:%M:%S+0000 UTC", time.gmtime(next_minute))
        if self.fault_format == "xml":
            prefix, ns = _THROTTLING_NS if fault.throttling else _SECURITY_NS
            parts = [
                f'<{prefix}:fault xmlns:{prefix}="{ns}">',
                f"<{prefix}:code>{fault.code}</{prefix}:code>",
                f"<{prefix}:message>{escape(fault.message)}</{prefix}:message>",
                f"<{prefix}:description>{escape(fault.description)}</{prefix}:description>",
            ]
            if next_access is not None:
                parts.append(f"<{prefix}:nextAccessTime>{next_access}</{prefix}:nextAccessTime>")
            parts.append(f"</{prefix}:fault>")
            return web.Response(
                text="".join(parts),
                status=fault.status,
                content_type="application/xml",
                charset="UTF-8",
                headers=headers,
            )
        body: dict[str, Any] = {
            "code": fault.code,
            "message": fault.message,
            "description": fault.description,
        }
        if next_access is not None:
            body["nextAccessTime"] = next_access
        return web.json_response({"fault": body}, status=fault.status, headers=headers)

    def _not_found(self, key: str) -> web.Response:
        description = f"The requested message ({key}) is not available."
        if self.fault_format == "xml":
            text = (
                '<am:fault xmlns:am="http://wso2.org/apimanager">'
                "<am:code>404</am:code><am:type>Status report</am:type>"
                f"<am:message>Not Found</am:message><am:description>{escape(description)}"
                "</am:description></am:fault>"
            )
            return web.Response(
                text=text, status=404, content_type="application/xml", charset="UTF-8"
            )
        body = {
            "code": 404,
            "type": "Status report",
            "message": "Not Found",
            "description": description,
        }
        return web.json_response(body, status=404)

    def _take_forced_fault(self) -> int | None:
        code = self._fault_code
        if code is None:
            return None
        self._fault_remaining -= 1
        if self._fault_remaining <= 0:
            self.force_fault(None)
        return code

    # -- messages --------------------------------------------------------------------------

    def _store(self, message: _Message) -> None:
        self._messages[message.key] = message
        self._stored_bytes += len(message.body)
        self._seen_keys[message.key] = None
        self._seen_keys.move_to_end(message.key)
        while len(self._seen_keys) > _MAX_REMEMBERED_KEYS:
            self._seen_keys.popitem(last=False)
        posted = [m for m in self._messages.values() if not m.inbound]
        while posted and (
            len(posted) > MAX_STORED_MESSAGES or self._stored_bytes > MAX_STORED_BYTES
        ):
            oldest = posted.pop(0)
            del self._messages[oldest.key]
            self._stored_bytes -= len(oldest.body)

    def _list_xml(self) -> str:
        items = []
        for m in self._messages.values():
            items.append(
                f'      <MESSAGES xmlns="{_DATASERVICE_NS}">\n'
                f"        {_element('IDEMPOTENCY_KEY', m.key)}\n"
                f"        {_element('INTERACTION_ID', m.interaction_id)}\n"
                f"        {_element('CONTENTTYPE', m.content_type)}\n"
                f"        {_element('MESSAGE_TYPE', m.message_type)}\n"
                "        <RSTATUS>0</RSTATUS>\n"
                "        <RLASTERR>0</RLASTERR>\n"
                f"        {_element('RSENDER', m.sender)}\n"
                "      </MESSAGES>\n"
            )
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">\n'
            "  <soapenv:Body>\n"
            "    <Data>\n" + "".join(items) + "    </Data>\n"
            "  </soapenv:Body>\n"
            "</soapenv:Envelope>\n"
        )

    async def _post_message(
        self, request: web.Request, row: _TokenRow, summary: dict[str, Any]
    ) -> web.Response:
        key = request.headers.get("x-idempotency-key", "").strip()
        if not key:
            self._record_body(summary, await _consume(request))
            self._missing_idempotency += 1
            return web.json_response({"error": "missing x-idempotency-key"}, status=400)
        body = await _consume(request, keep_limit=self.max_message_bytes)
        self._record_body(summary, body)
        if key in self._messages or key in self._seen_keys:
            self._duplicate_posts += 1
            summary["duplicate"] = True
            return web.Response(status=202)
        if body.data is None:
            return web.json_response(
                {"error": "message too large", "limit": self.max_message_bytes}, status=413
            )
        message_type, sender = _sniff(body.data, row.username)
        self._store(
            _Message(
                key=key,
                body=body.data,
                message_type=message_type,
                sender=sender,
                interaction_id=request.headers.get("x-fapi-interaction-id", ""),
                content_type=_content_type(request.headers.get("Content-Type")),
            )
        )
        return web.Response(status=202)

    # -- HTTP handlers ---------------------------------------------------------------------

    async def _token_handler(self, request: web.Request) -> web.Response:
        event: dict[str, Any] = {"grant": None, "start": time.monotonic()}
        try:
            with self._controls.track(event) as call:
                form = await request.post()
                raw_grant = form.get("grant_type")
                event["grant"] = raw_grant if isinstance(raw_grant, str) else None
                # Shutdown and injected failures answer with the same OAuth bodies as Keycloak's.
                response = await self._controls.intercept(
                    self.latency, closed=_shutting_down, failure=_injected_failure
                ) or self._grant(request, {k: v for k, v in form.items() if isinstance(v, str)})
                return call.done(response)
        finally:
            self._calls += 1
            self._by_grant[event["grant"] or "(missing)"] += 1

    async def _revoke_handler(self, request: web.Request) -> web.Response:
        """RFC 7009 as WSO2 does it: 200 whether or not the token was known."""
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        try:
            consumer_key = self._authenticate_client(request, form)
        except OAuthError as exc:
            return exc.response()
        token = form.get("token", "")
        if not token:
            return OAuthError(400, "invalid_request", "Invalid revocation request").response()
        row = self._by_access.get(token) or self._by_refresh.get(token)
        if row is not None and row.consumer_key == consumer_key and row.state == _ACTIVE:
            row.state = _REVOKED
            self._revocations += 1
        return web.Response(status=200, headers=_NO_STORE)

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

    @staticmethod
    def _record_body(summary: dict[str, Any], body: _Body) -> None:
        summary["body_sha256"] = body.sha256
        summary["body_length"] = body.length

    async def _api_handler(self, request: web.Request) -> web.StreamResponse:
        self._requests += 1
        summary: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "query": request.rel_url.raw_query_string,
            "headers": _headers(request),
            "client_cert": _client_cert(request),
            "request_no": self._requests,
        }
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

    async def _api(self, request: web.Request, summary: dict[str, Any]) -> web.Response:
        route = self._route(request)
        if route is None:
            self._record_body(summary, await _consume(request))
            return self._fault_response(900906)
        forced = self._take_forced_fault()
        if forced is not None:
            self._record_body(summary, await _consume(request))
            summary["forced_fault"] = forced
            return self._fault_response(forced)
        token = _bearer_token(request.headers.get("Authorization"))
        if token is None:
            self._record_body(summary, await _consume(request))
            return self._fault_response(900902)
        row = self._live_row(token, time.monotonic())
        if row is None:
            self._record_body(summary, await _consume(request))
            return self._fault_response(900901)
        summary["token_user"] = row.username
        kind, key = route
        if kind == "messages" and request.method == "POST":
            return await self._post_message(request, row, summary)
        self._record_body(summary, await _consume(request))
        if kind == "messages":
            return web.Response(
                text=self._list_xml(), content_type="application/xml", charset="UTF-8"
            )
        found = self._messages.get(key)
        if found is None:
            return self._not_found(key)
        return web.Response(body=found.body, content_type="application/xml")

    async def _expire_handler(self, request: web.Request) -> web.Response:
        return web.json_response({"expired": self.expire_tokens()})

    async def _fault_handler(self, request: web.Request) -> web.Response:
        try:
            raw_code = request.query.get("code", "")
            raw_count = request.query.get("count", "")
            code = int(raw_code) if raw_code and raw_code.lower() != "none" else None
            count = int(raw_count) if raw_count else 1
            self.force_fault(code, count=count)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"code": self._fault_code, "count": self._fault_remaining})


def issue_kisc_client(pki: Pki, username: str = "bank-user") -> IssuedCert:
    """A KISC-style client certificate: RSA 2048, clientAuth, CN = the system user name."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", username).lstrip(".") or "user"
    return pki.issue_client(f"kisc-client-{safe}", common_name=username)


async def start_wso2(pki: Pki, *, port: int = 0, **settings: Any) -> tuple[Wso2Gateway, TlsServer]:
    """Start a gateway on 127.0.0.1 (cert "kisc-gw") that requires a client certificate.

    ``settings`` are ``Wso2Gateway`` keyword arguments. Stop it with ``server.stop()``.
    """
    gateway = Wso2Gateway(**settings)
    cert = pki.issue_server("kisc-gw", _LOOPBACK_HOSTS)
    server = TlsServer(
        gateway.app, pki.server_ssl_context(cert, require_client_cert=True), port=port
    )
    await server.start()
    return gateway, server
