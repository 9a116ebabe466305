"""What can go wrong on the way to a peer, as types (as httpcore names them): connect, TLS,
timeout, closed, too large. Each says what happened in one phrase (:meth:`describe`), so the
proxy, the IdP calls and the signers word transport failures alike and decide by type, never
by parsing a message.

They stay subclasses of the builtin exceptions they refine (``OSError``, ``TimeoutError``,
``ConnectionError``), so code that only needs "the network failed" can still catch those.
"""

from __future__ import annotations

import os
import ssl


class TransportError(Exception):
    """A call to ``peer`` (``host:port``) failed before a complete answer was had."""

    kind = "transport"

    def __init__(self, peer: str, detail: str = "") -> None:
        super().__init__(peer, detail)
        self.peer = peer
        self.detail = detail

    def describe(self) -> str:
        return f"connection to {self.peer} failed: {self.detail or type(self).__name__}"

    def __str__(self) -> str:
        return self.describe()


class ConnectFailed(TransportError, OSError):
    """No connection could be made: DNS, refused, unreachable."""

    kind = "connect"

    def describe(self) -> str:
        return f"cannot connect to {self.peer} ({self.detail})"


class TlsFailed(TransportError, OSError):
    """The TLS handshake failed for a reason other than the peer's certificate."""

    kind = "tls"

    def describe(self) -> str:
        return f"TLS handshake with {self.peer} failed ({self.detail})"


class CertificateRejected(TlsFailed):
    """The peer's certificate did not verify against the configured trust."""

    def describe(self) -> str:
        return f"TLS certificate of {self.peer} failed verification: {self.detail}"


class TimedOut(TransportError, TimeoutError):
    """Nothing came within the timeout: while connecting, or while waiting for the answer."""

    kind = "timeout"

    def __init__(self, peer: str, seconds: float, *, connecting: bool = False) -> None:
        super().__init__(peer, f"{seconds:g} s")
        self.seconds = seconds
        self.connecting = connecting

    def describe(self) -> str:
        if self.connecting:
            return f"connecting to {self.peer} timed out after {self.seconds:g} s"
        return f"no answer within {self.seconds:g} s from {self.peer}"


class Closed(TransportError, ConnectionError):
    """The peer closed or broke the connection before its answer was complete."""

    kind = "closed"

    def describe(self) -> str:
        return f"{self.peer} broke off the connection ({self.detail or 'closed'})"


class PoolFull(TransportError):
    """Every connection the sidecar allows itself to this peer stayed busy too long."""

    kind = "busy"

    def describe(self) -> str:
        return f"{self.peer}: {self.detail}"


class TooLarge(TransportError):
    """The peer's answer was over a limit the sidecar keeps (a head, a buffered body)."""

    kind = "too_large"

    def describe(self) -> str:
        return f"{self.peer} answered with {self.detail}"


class ProxyUnreachable(TransportError, OSError):
    """No connection to the egress proxy itself (``peer`` is the proxy): down, refused,
    unresolvable, or silent for the connect timeout."""

    kind = "proxy_unreachable"

    def describe(self) -> str:
        return f"cannot connect to egress proxy {self.peer} ({self.detail})"


class ProxyAuthRefused(TransportError, OSError):
    """The egress proxy answered the CONNECT with 407: wrong or missing credentials."""

    kind = "proxy_auth"

    def describe(self) -> str:
        return f"egress proxy {self.peer} {self.detail}"


class ProxyRefused(TransportError, OSError):
    """The egress proxy answered the CONNECT with something other than 200 or 407 (its
    ``status``), or with no valid answer at all (``status`` None)."""

    kind = "proxy_refused"

    def __init__(self, peer: str, status: int | None, detail: str) -> None:
        super().__init__(peer, detail)
        self.status = status

    def describe(self) -> str:
        return f"egress proxy {self.peer} {self.detail}"


class HeadRefused(Exception):
    """A request head (or trailer block) the server will not parse: it answers ``status``
    with the JSON ``error`` and closes."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message


class TooManyAhead(Exception):
    """Stops the parser: more pipelined requests arrived at once than are kept."""


def connect_error(exc: BaseException, peer: str, timeout: float) -> TransportError:
    """A failed connect or TLS handshake (an ``ssl``/``OSError``/timeout) as a typed error."""
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, ssl.SSLCertVerificationError):
        return CertificateRejected(peer, str(exc.verify_message))
    if isinstance(exc, ssl.SSLError):
        return TlsFailed(peer, printable(exc.reason or exc))
    if isinstance(exc, TimeoutError):
        return TimedOut(peer, timeout, connecting=True)
    if isinstance(exc, OSError):
        # asyncio words a refusal "Connect call failed (addr)": the errno says it plainly.
        reason = os.strerror(exc.errno) if exc.errno else exc.strerror or printable(exc)
        return ConnectFailed(peer, reason or type(exc).__name__)
    return TransportError(peer, type(exc).__name__)


def printable(value: object, limit: int = 200) -> str:
    """A printable, bounded rendering of text that came from the network."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(value))
    return text[:limit]
