"""``Retry-After`` (RFC 9110 section 10.2.3), the one parser for upstream and IdP answers.

A peer's value is read strictly (ASCII digits, or an HTTP-date in one of its three forms)
and clamped: one answer must never pause an upstream, or a login, for longer than
``MAX_RETRY_AFTER``. A 400-digit value once made every later request fail.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime

# The longest pause one answer can impose. An hour covers the quota windows APIs announce;
# beyond it a value is a mistake or hostile, and the sidecar tries again after an hour.
MAX_RETRY_AFTER = 3600.0
# What an upstream 429 without a usable Retry-After pauses the upstream for.
DEFAULT_RETRY_AFTER = 30.0

_DAYS = "Mon|Tue|Wed|Thu|Fri|Sat|Sun"
_LONG_DAYS = "Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday"
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH = "|".join(_MONTHS)
_TIME = r"(?P<h>\d\d):(?P<m>\d\d):(?P<s>\d\d)"
# re.ASCII: \d is 0-9 only, never another script's digits or a superscript.
_DATES = [
    re.compile(rf"(?:{_DAYS}), (?P<d>\d\d) (?P<mon>{_MONTH}) (?P<y>\d{{4}}) {_TIME} GMT", re.A),
    re.compile(rf"(?:{_LONG_DAYS}), (?P<d>\d\d)-(?P<mon>{_MONTH})-(?P<y>\d\d) {_TIME} GMT", re.A),
    re.compile(rf"(?:{_DAYS}) (?P<mon>{_MONTH}) (?P<d>[ \d]\d) {_TIME} (?P<y>\d{{4}})", re.A),
]
_MAX_DIGITS = len(str(int(MAX_RETRY_AFTER)))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait, in ``[0, MAX_RETRY_AFTER]``; None when absent or not a valid value.

    An HTTP-date counts from ``now`` (the wall clock by default); one in the past is 0."""
    if value is None:
        return None
    text = value.strip(" \t")
    if text.isascii() and text.isdigit():
        digits = text.lstrip("0") or "0"
        if len(digits) > _MAX_DIGITS:  # never converted: int() of 5,000 digits raises
            return MAX_RETRY_AFTER
        return min(float(digits), MAX_RETRY_AFTER)
    when = _http_date(text)
    if when is None:
        return None
    left = when - (time.time() if now is None else now)
    return min(max(0.0, math.ceil(left)), MAX_RETRY_AFTER)


def retry_after_or_default(value: str | None, default: float = DEFAULT_RETRY_AFTER) -> float:
    """A 429's pause: its valid ``Retry-After``, else ``default`` (both within the clamp)."""
    seconds = parse_retry_after(value)
    return clamp_retry_after(default) if seconds is None else seconds


def clamp_retry_after(seconds: float) -> float:
    """Any pause the sidecar computes, within ``[0, MAX_RETRY_AFTER]`` (NaN counts as 0)."""
    if not seconds > 0:  # also NaN
        return 0.0
    return min(float(seconds), MAX_RETRY_AFTER)


def retry_after_header(seconds: float) -> str:
    """The ``Retry-After`` the sidecar sends: whole seconds, at least 1, at most the clamp."""
    return str(max(1, math.ceil(clamp_retry_after(seconds))))


def _http_date(text: str) -> float | None:
    for form in _DATES:
        match = form.fullmatch(text)
        if match is None:
            continue
        year = int(match["y"])
        if year < 100:  # rfc850's two digits: the nearest such year not 50 or more ahead
            this_year = datetime.now(UTC).year
            year += this_year - this_year % 100
            if year - this_year >= 50:
                year -= 100
        try:
            when = datetime(
                year, _MONTHS.index(match["mon"]) + 1, int(match["d"]),
                int(match["h"]), int(match["m"]), int(match["s"]), tzinfo=UTC,
            )
        except ValueError:  # 31 Feb, hour 25
            return None
        return when.timestamp()
    return None
