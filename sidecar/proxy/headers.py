"""Header rules of a proxy (RFC 9110 §7.6.1): hop-by-hop headers stop here."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.config.models import HeaderDate
from sidecar.proxy.location import TargetUrls

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Answered or set by the sidecar itself on the way up. The body's framing is among them:
# the client writes Content-Length or chunked from what the parser found, never from the
# app's headers, so no header trick can make the upstream see a body as a second request.
_NOT_FORWARDED_UP = HOP_BY_HOP | {"host", "authorization", "expect", "content-length"}


def _connection_listed(headers: CIMultiDictProxy[str]) -> set[str]:
    listed: set[str] = set()
    for value in headers.getall("Connection", ()):
        listed.update(t.strip().lower() for t in value.split(",") if t.strip())
    return listed


def upstream_headers(
    incoming: CIMultiDictProxy[str],
    added: Mapping[str, str],
    date: HeaderDate,
    login_time: float | None = None,
    replaced: Mapping[str, str] | None = None,
) -> CIMultiDict[str]:
    """The app's end-to-end headers, plus configured ones the app did not send, and the
    ``replaced`` ones (``set_headers``) whatever the app sent.

    Made once per request, so a replay carries the same generated ids and dates (but the new
    token's ``{login_time}``, see :func:`login_time_headers`); the pipeline sets
    ``Authorization`` on each send. ``login_time``: Unix time the token was obtained."""
    drop = _NOT_FORWARDED_UP
    if "Connection" in incoming:
        drop = drop | _connection_listed(incoming)
    out = CIMultiDict([(k, v) for k, v in incoming.items() if k.lower() not in drop])
    for name, template in added.items():
        if name not in out:
            # Heads are written as latin-1 (the app's header bytes go back out unchanged);
            # a configured value is sent as its UTF-8 bytes, so "Касса №1" works too.
            out[name] = _latin1(render(template, date, login_time))
    if replaced:
        for name, template in replaced.items():
            out[name] = _latin1(render(template, date, login_time))  # replaces all
    return out


def login_time_headers(
    out: CIMultiDict[str],
    incoming: CIMultiDictProxy[str],
    added: Mapping[str, str],
    date: HeaderDate,
    login_time: float,
) -> None:
    """A replay goes with a new token: the configured headers that say when it was obtained
    say so for the new one (the app's own headers stay as it sent them)."""
    for name, template in added.items():
        if "{login_time}" in template and name not in incoming:
            out[name] = _latin1(render(template, date, login_time))


def _latin1(value: str) -> str:
    # Heads are written as latin-1 (the app's header bytes go back out unchanged); a
    # configured value is sent as its UTF-8 bytes.
    return value.encode().decode("latin-1")


def render(template: str, date: HeaderDate, login_time: float | None = None) -> str:
    value = template
    if "{uuid}" in value:
        value = value.replace("{uuid}", str(uuid.uuid4()))
    if "{now}" in value:
        value = value.replace("{now}", _date(date, None))
    if "{login_time}" in value:
        value = value.replace("{login_time}", _date(date, login_time))
    return value


def _date(date: HeaderDate, unix: float | None) -> str:
    """``unix`` (now when None) as ``header_date`` says."""
    if date.format == "http":
        when = datetime.now(UTC) if unix is None else datetime.fromtimestamp(unix, UTC)
        return format_datetime(when, usegmt=True)
    sign = -1 if date.utc_offset.startswith("-") else 1
    hours, minutes = date.utc_offset[1:].split(":")
    zone = timezone(sign * timedelta(hours=int(hours), minutes=int(minutes)))
    when = datetime.now(zone) if unix is None else datetime.fromtimestamp(unix, zone)
    return when.isoformat(timespec="seconds")


_HOP_BY_HOP_RAW = frozenset(name.encode() for name in HOP_BY_HOP)
_LOCATIONS_RAW = frozenset({b"location", b"content-location"})
# One set lookup per header finds both kinds that need a second look.
_SPECIAL_RAW = _HOP_BY_HOP_RAW | _LOCATIONS_RAW


def downstream_headers(
    raw: list[tuple[bytes, bytes]],
    target: TargetUrls | None = None,
    app_origin: str = "",
) -> tuple[list[tuple[bytes, bytes]], set[bytes]]:
    """The upstream's end-to-end headers, as the raw bytes it sent (nothing is decoded on
    the way back), and their lower-cased names. A ``Location``/``Content-Location`` at
    ``target`` is rewritten to ``app_origin`` (see :mod:`.location`)."""
    out: list[tuple[bytes, bytes]] = []
    names: set[bytes] = set()
    listed: set[bytes] = set()
    for name, value in raw:
        lower = name.lower()
        if lower in _SPECIAL_RAW:
            if lower in _LOCATIONS_RAW:
                if target is not None and app_origin:
                    value = target.rewrite(value, app_origin)
                out.append((name, value))
                names.add(lower)
            elif lower == b"connection":  # the names it lists are hop-by-hop too
                listed.update(t.strip().lower() for t in value.split(b","))
            elif lower == b"transfer-encoding":
                # Chunked is redone for the app; another coding (gzip) stays, as the body
                # still carries it.
                codings = [c for c in value.split(b",") if c.strip().lower() != b"chunked"]
                if codings:
                    out.append((name, b",".join(codings).strip()))
                    names.add(lower)
            continue
        out.append((name, value))
        names.add(lower)
    # Framing is not the upstream's to withdraw: the length stays with the body it frames.
    listed -= {b"", b"close", b"keep-alive", b"content-length", b"transfer-encoding"}
    if listed & names:
        out = [(name, value) for name, value in out if name.lower() not in listed]
        names -= listed
    return out, names
