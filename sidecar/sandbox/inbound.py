"""What the sandbox APIs read from and report about a request: its bearer token, client
certificate and headers, and its body's digest, read in chunks so no body is held whole."""

from __future__ import annotations

import hashlib
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes

__all__ = [
    "bearer_token",
    "client_cert",
    "drain",
    "hash_body",
    "header_map",
    "peer_certificate",
    "request_summary",
]


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def peer_certificate(request: web.Request) -> x509.Certificate | None:
    """The client certificate presented on this request's TLS connection, if any."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return x509.load_der_x509_certificate(der) if der else None


def client_cert(request: web.Request) -> dict[str, Any] | None:
    cert = peer_certificate(request)
    if cert is None:
        return None
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": cert.serial_number,
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }


def header_map(request: web.Request) -> dict[str, str | list[str]]:
    """Headers by lower-case name; a repeated header becomes a list of its values."""
    out: dict[str, str | list[str]] = {}
    for name, value in request.headers.items():
        key = name.lower()
        previous = out.get(key)
        if previous is None:
            out[key] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            out[key] = [previous, value]
    return out


def request_summary(request: web.Request, **fields: Any) -> dict[str, Any]:
    """The report of an API call: method, path, query, headers, client certificate, then
    ``fields``."""
    return {
        "method": request.method,
        "path": request.path,
        "query": request.rel_url.raw_query_string,
        "headers": header_map(request),
        "client_cert": client_cert(request),
        **fields,
    }


async def hash_body(request: web.Request) -> tuple[str, int]:
    """Read the whole body in chunks: its SHA-256 and length, never holding it in memory."""
    digest = hashlib.sha256()
    length = 0
    while chunk := await request.content.readany():
        digest.update(chunk)
        length += len(chunk)
    return digest.hexdigest(), length


async def drain(request: web.Request) -> None:
    # Reading the body before answering keeps the connection clean: answering early and
    # closing would make the client see a reset instead of the error.
    while await request.content.readany():
        pass
