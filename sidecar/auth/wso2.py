"""``wso2_password``: WSO2 API Manager as KISC runs it (docs/protocols.md, "KISC").

Login: HTTP Basic ``consumer_key:consumer_secret`` + password grant, over mutual TLS. Renewal
must use the refresh grant: WSO2 hands back the *same* still-valid token on a repeated login,
and rotates refresh tokens (each is single-use). The gateway says "token no longer valid" with
the authentication-failure fault codes 900900-900904 in a 401 body, JSON or the APIM 2.x XML
form.
"""

from __future__ import annotations

import json
import re

from sidecar.auth.oauth import PasswordGrant, TokenEndpoint
from sidecar.config.auth import Wso2PasswordAuth

# carbon-apimgt's APISecurityConstants group these as authentication failures: 900901 invalid,
# 900902 missing, 900903 expired, 900904 inactive (revoked). 900900 is unclassified: only in a
# 401 does it mean the token (it comes as a 500 when the gateway itself failed). 900908 and up
# (forbidden, subscription, scope) are about permissions: a new token would not change them.
TOKEN_INVALID_CODES = frozenset(range(900900, 900905))
_XML_CODE = re.compile(rb"<(?:\w+:)?code>\s*(\d{6})\s*</(?:\w+:)?code>")


class Wso2PasswordFlow(PasswordGrant):
    """The consumer key and secret go as HTTP Basic, as WSO2's token endpoint wants."""

    def __init__(self, cfg: Wso2PasswordAuth, endpoint: TokenEndpoint) -> None:
        super().__init__(
            endpoint,
            cfg.consumer_key,
            cfg.consumer_secret.get_secret_value(),
            cfg.scope,
            cfg.username,
            cfg.password,
            basic_auth=True,
        )


def fault_code(body: bytes) -> int | None:
    """The WSO2 gateway fault code in a JSON ``{"fault": {"code": …}}`` or XML ``ams:fault``."""
    text = body.strip()
    if text.startswith(b"{"):
        try:
            data = json.loads(text)
        except ValueError:
            return None
        fault = data.get("fault") if isinstance(data, dict) else None
        code = fault.get("code") if isinstance(fault, dict) else None
        try:
            return int(code) if code is not None else None
        except (TypeError, ValueError):
            return None
    found = _XML_CODE.search(text)
    return int(found.group(1)) if found else None


class Wso2GatewayFaults:
    """Which upstream answers mean "the token is dead": only 401 faults 900900-900904.

    Other 401s and 403s (scope, subscription, 900908-900910) are the app's business."""

    inspect_statuses = frozenset({401, 403})

    def token_rejected(self, status: int, body: bytes) -> tuple[bool, int | None]:
        code = fault_code(body)
        return status == 401 and code in TOKEN_INVALID_CODES, code
