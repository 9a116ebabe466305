"""What an auth flow is: something that can log in, and perhaps refresh, against one IdP.

Flows only speak to their IdP. Timing, caching, single flight and backoff belong to the
token manager (``auth/manager.py``); the request path only asks a :class:`TokenSource`.
"""

from __future__ import annotations

import re
import ssl
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

# The longest lifetime a token is taken to have, whatever the IdP says (expires_in, a JWT exp
# far off, or a configured TTL): trust, but renew at least daily.
MAX_LIFETIME = 24 * 3600.0

# A token goes verbatim into the upstream's ``Authorization: Bearer`` header. RFC 6750's
# b64token (JWTs fit it) keeps CR/LF (header and request injection on the upstream
# connection) and non-latin-1 text (unencodable: every request would fail) out of it.
MAX_TOKEN_LENGTH = 16 * 1024
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def token_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as a bearer token, or None. Never quotes the value."""
    if not value:
        return "it is empty"
    if len(value) > MAX_TOKEN_LENGTH:
        return f"it is longer than {MAX_TOKEN_LENGTH} characters ({len(value)})"
    if _B64TOKEN.fullmatch(value) is None:
        return "it has characters outside RFC 6750 b64token (A-Z a-z 0-9 - . _ ~ + / =)"
    return None


@dataclass(frozen=True, repr=False)
class Grant:
    """One successful answer of an IdP. ``repr`` hides the secrets."""

    access_token: str
    expires_in: float | None  # seconds; None: the IdP did not say
    refresh_token: str | None = None
    refresh_expires_in: float | None = None  # None or 0: valid until the IdP rejects it

    def __post_init__(self) -> None:
        # Every flow builds a Grant: checking here covers them all, before anything is sent.
        problem = token_problem(self.access_token)
        if problem is not None:
            raise AuthError(f"the issued access token cannot be used: {problem}")

    def __repr__(self) -> str:
        return f"Grant(expires_in={self.expires_in}, refresh={self.refresh_token is not None})"


@dataclass(frozen=True, repr=False, eq=False)
class Token:
    """The bearer token the request path attaches. Compared by identity."""

    value: str
    expires_at: float  # time.monotonic() deadline; inf for tokens that never expire
    margin: float = 1.0  # not sent in its last `margin` seconds: it could expire on the way
    obtained_at: float = field(default_factory=time.monotonic)
    obtained_wall: float = field(default_factory=time.time)  # for {login_time} in headers
    # Obtained because the upstream rejected the token before it: if this one is rejected
    # soon too, another login would not help (a 401 for a permission, not the token).
    after_rejection: bool = False

    def usable(self, now: float) -> bool:
        return now < self.expires_at - self.margin

    def __repr__(self) -> str:
        return f"Token(expires_in={self.expires_at - time.monotonic():.1f}s)"


class Failure(StrEnum):
    """Why a login or refresh failed: what the token manager decides the next step by."""

    REFUSED = "refused"  # the IdP answered no (a 4xx): credentials, client, signature
    UNAVAILABLE = "unavailable"  # the IdP could not answer (5xx, 429, network, timeout)
    BAD_ANSWER = "bad_answer"  # the IdP answered, but with nothing usable
    LOCAL = "local"  # a step of the sidecar's own failed (signing, shutting down)


class AuthError(Exception):
    """The IdP refused or failed. ``reason`` is safe to log and to show the app; ``kind`` and
    ``status`` (the IdP's HTTP status, when it answered) are what code decides by."""

    def __init__(
        self,
        reason: str,
        *,
        kind: Failure = Failure.BAD_ANSWER,
        status: int | None = None,
        retry_after: float | None = None,
        refresh_token: str | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind
        self.status = status
        self.retry_after = retry_after
        self.refresh_token = refresh_token  # a rotated one in an otherwise unusable answer

    @classmethod
    def answered(
        cls, status: int, reason: str, retry_after: float | None = None
    ) -> AuthError:
        """The IdP answered ``status`` (not a success): refused on a 4xx but 429, else
        unavailable."""
        refused = 400 <= status < 500 and status != 429
        return cls(
            reason,
            kind=Failure.REFUSED if refused else Failure.UNAVAILABLE,
            status=status,
            retry_after=retry_after,
        )


class InvalidGrant(AuthError):
    """The refresh token is dead (expired, rotated, session gone): log in again."""


class NoToken(Exception):
    """No valid token could be had for a request; becomes a 503 with ``Retry-After``."""

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class AuthFlow(Protocol):
    """One IdP conversation. ``refresh`` raises :class:`InvalidGrant` when it cannot help."""

    grant_type: str  # label of a full login in logs and metrics

    async def login(self) -> Grant: ...

    async def refresh(self, refresh_token: str) -> Grant: ...

    def renew_tls(self, ssl_context: ssl.SSLContext) -> None: ...

    async def close(self) -> None: ...


class RejectionPolicy(Protocol):
    """Reads an upstream's answer: does it say the token we sent is no longer valid?

    ``inspect_statuses``: answers whose body (its first 64 KiB) the decision needs; for those
    the body is read before deciding, and passed on to the app when no replay happens."""

    inspect_statuses: frozenset[int]

    def token_rejected(self, status: int, body: bytes) -> tuple[bool, int | None]:
        """(token is dead, the gateway's fault code if the body carried one)."""
        ...


class AnyUnauthorized:
    """Keycloak-fronted APIs (MOEX): every 401 means the token is invalid or expired."""

    inspect_statuses: frozenset[int] = frozenset()

    def token_rejected(self, status: int, body: bytes) -> tuple[bool, int | None]:
        return status == 401, None


class TokenEvents(Protocol):
    """Where a token source reports what it did (metrics); optional."""

    def token_fetched(self, grant: str, ok: bool, seconds: float) -> None: ...

    def token_state(self, expires_at_unix: float, consecutive_failures: int) -> None: ...


class TokenSource(Protocol):
    """What the upstream pipeline needs: a current token, and a way to report a dead one."""

    async def start(self) -> None: ...

    async def get(self) -> Token: ...

    def peek(self) -> Token | None:
        """A usable token without waiting, or None (then ``await get()``): the hot path's
        shortcut, since nearly every request finds a valid token."""
        ...

    def invalidate(self, token: Token) -> None: ...

    def renew_tls(self, ssl_context: ssl.SSLContext) -> None:
        """A rotated certificate: use it for the next IdP call (the token is kept)."""
        ...

    def status(self) -> dict[str, object]: ...

    @property
    def ready(self) -> bool: ...

    async def close(self) -> None: ...
