"""Transport failures as types (``sidecar.http1.errors``): what a failed connect becomes, and
the one phrase each type words itself in."""

from __future__ import annotations

import errno
import ssl

import pytest

from sidecar.http1.errors import (
    CertificateRejected,
    Closed,
    ConnectFailed,
    TimedOut,
    TlsFailed,
    TooLarge,
    TransportError,
    connect_error,
    printable,
)

PEER = "api.example:443"


def test_a_refused_connect_is_worded_by_its_errno() -> None:
    refused = ConnectionRefusedError(errno.ECONNREFUSED, "Connect call failed ('1.2.3.4', 443)")
    error = connect_error(refused, PEER, 3.0)
    assert isinstance(error, ConnectFailed) and isinstance(error, OSError)
    assert str(error) == f"cannot connect to {PEER} (Connection refused)"
    assert error.kind == "connect"


def test_a_certificate_failure_is_not_just_a_tls_failure() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_message = "unable to get local issuer certificate"
    error = connect_error(verify, PEER, 3.0)
    assert type(error) is CertificateRejected and isinstance(error, TlsFailed)
    assert "failed verification: unable to get local issuer certificate" in str(error)

    other = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    other.reason = "WRONG_VERSION_NUMBER"
    error = connect_error(other, PEER, 3.0)
    assert type(error) is TlsFailed and error.kind == "tls"
    assert str(error) == f"TLS handshake with {PEER} failed (WRONG_VERSION_NUMBER)"


def test_a_connect_timeout_says_it_was_connecting() -> None:
    error = connect_error(TimeoutError(), PEER, 2.5)
    assert isinstance(error, TimedOut) and isinstance(error, TimeoutError)
    assert error.connecting and error.seconds == 2.5
    assert str(error) == f"connecting to {PEER} timed out after 2.5 s"
    assert str(TimedOut(PEER, 30)) == f"no answer within 30 s from {PEER}"


def test_a_typed_error_passes_through_and_anything_else_is_generic() -> None:
    closed = Closed(PEER, "reset")
    assert connect_error(closed, PEER, 1) is closed
    assert isinstance(closed, ConnectionError)
    assert str(closed) == f"{PEER} broke off the connection (reset)"
    generic = connect_error(ValueError("odd"), PEER, 1)
    assert type(generic) is TransportError and generic.detail == "ValueError"
    assert str(TooLarge(PEER, "a head over 64 KiB")) == f"{PEER} answered with a head over 64 KiB"


@pytest.mark.parametrize(("text", "shown"), [("ok\r\ninjected", "ok  injected"),
                                             ("x" * 300, "x" * 200), ("\x00\x1b[31m", "  [31m")])
def test_text_from_the_network_is_made_printable_and_bounded(text: str, shown: str) -> None:
    assert printable(text) == shown
