"""The WSO2 API Manager 2.x gateway's fault dialect, as KISC's gateway answers
(docs/protocols.md, "KISC"): the fault codes (900901, 900902, ...) with their statuses and
wording, in JSON or APIM 2.x XML form, and the API faults a user can force on the next calls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

__all__ = [
    "API_CONTEXT",
    "API_VERSION",
    "FAULTS",
    "FAULT_FORMATS",
    "Fault",
    "ForcedFaults",
    "fault_format",
    "fault_response",
    "not_found_response",
]

# The API as KISC publishes it.
API_CONTEXT = "/etsfo/1.0.0"
API_VERSION = "1.0.0"
FAULT_FORMATS = ("json", "xml")

_INVALID_TOKEN_CHALLENGE = (
    'OAuth2 realm="WSO2 API Manager", error="invalid_token", '
    'error_description="The access token expired"'
)
_SECURITY_NS = ("ams", "http://wso2.org/apimanager/security")
_THROTTLING_NS = ("amt", "http://wso2.org/apimanager/throttling")
_ACCESS_FAILURE = f"Access failure for API: {API_CONTEXT}, version: {API_VERSION}"
_THROTTLED_OUT = "Message throttled out"
_OVER_QUOTA = "You have exceeded your quota"


def fault_format(name: str, value: Any) -> str:
    """The ``fault_format`` setting's check."""
    if value not in FAULT_FORMATS:
        raise ValueError(f"{name} must be one of {FAULT_FORMATS}")
    return str(value)


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


def fault_response(code: int, fault_format: str) -> web.Response:
    """Fault ``code`` as the gateway answers it, in ``fault_format`` ("json" or "xml")."""
    fault = FAULTS[code]
    headers = {"WWW-Authenticate": _INVALID_TOKEN_CHALLENGE} if fault.status == 401 else {}
    next_access = None
    if fault.throttling and code != 900805:
        next_minute = (int(time.time()) // 60 + 1) * 60
        next_access = time.strftime("%Y-%b-%d %H:%M:%S+0000 UTC", time.gmtime(next_minute))
    if fault_format == "xml":
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


def not_found_response(key: str, fault_format: str) -> web.Response:
    """The gateway's 404 status report for a message it does not have."""
    description = f"The requested message ({key}) is not available."
    if fault_format == "xml":
        text = (
            '<am:fault xmlns:am="http://wso2.org/apimanager">'
            "<am:code>404</am:code><am:type>Status report</am:type>"
            f"<am:message>Not Found</am:message><am:description>{escape(description)}"
            "</am:description></am:fault>"
        )
        return web.Response(text=text, status=404, content_type="application/xml", charset="UTF-8")
    body = {
        "code": 404,
        "type": "Status report",
        "message": "Not Found",
        "description": description,
    }
    return web.json_response(body, status=404)


class ForcedFaults:
    """Faults forced on the next API calls (not /token), used up one call at a time."""

    def __init__(self) -> None:
        self.code: int | None = None
        self.remaining = 0

    def force(self, code: int | None, count: int = 1) -> None:
        """``code=None`` or ``count < 1`` clears a pending fault."""
        if code is not None and code not in FAULTS:
            raise ValueError(f"unknown WSO2 fault code {code}; known: {sorted(FAULTS)}")
        if code is None or count < 1:
            self.code, self.remaining = None, 0
        else:
            self.code, self.remaining = code, count

    def take(self) -> int | None:
        """The fault due on this call, if any."""
        code = self.code
        if code is None:
            return None
        self.remaining -= 1
        if self.remaining <= 0:
            self.force(None)
        return code

    def state(self) -> dict[str, int] | None:
        return {"code": self.code, "remaining": self.remaining} if self.code is not None else None
