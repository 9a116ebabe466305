"""``mpt_signin``: ИС МПТ, Kazakhstan's marking system, "true API" login (docs/protocols.md, "MPT").

1. ``GET {base_url}/auth/key`` → ``{"uuid", "data"}`` (a one-time challenge);
2. an ATTACHED CMS over the UTF-8 bytes of ``data``, signer certificate included;
3. ``POST {base_url}/auth/simpleSignIn`` ``{"uuid", "data": <base64 CMS>, ...extra}`` →
   ``{"token": ...}``. The token's lifetime is its JWT ``exp`` (read without verifying),
   else ``token_ttl``. There is no refresh: renewal is a new signed login.
"""

from __future__ import annotations

import json
import re
import ssl
import time
from typing import Any

from sidecar import logs
from sidecar.auth.base import AuthError, Failure, Grant, InvalidGrant
from sidecar.auth.http import idp_error
from sidecar.auth.jwt import expiry as jwt_expiry
from sidecar.config.auth import MptSigninAuth
from sidecar.http1.dial import Dialer
from sidecar.http1.errors import TransportError
from sidecar.http1.fetch import Fetcher
from sidecar.http1.retry_after import parse_retry_after
from sidecar.signing import Signer, SigningError, b64

# The challenge is a short random string of printable ASCII; whatever else comes back is not
# handed to the signer (a token device or an external program) to sign.
MAX_CHALLENGE = 16 * 1024
_CHALLENGE = re.compile(r"[\x20-\x7e]+")


class MptSigninFlow:
    grant_type = "signin"

    def __init__(
        self,
        cfg: MptSigninAuth,
        ssl_context: ssl.SSLContext,
        signer: Signer,
        dialer: Dialer | None = None,
    ) -> None:
        self._cfg = cfg
        self._base = cfg.base_url.rstrip("/")
        self._http = Fetcher(ssl_context, cfg.timeout, dialer)
        self._signer = signer

    async def login(self) -> Grant:
        challenge = await self._call("GET", "/auth/key")
        # "uuid" in any case: MPT's guide spells it "UUID" in its tables, "uuid" in its text;
        # it goes back to simpleSignIn spelled as the server spelled it.
        uuid_key = next((k for k in challenge if k.lower() == "uuid"), "uuid")
        uuid, data = challenge.get(uuid_key), challenge.get("data")
        if not isinstance(uuid, str) or not isinstance(data, str) or not uuid or not data:
            raise AuthError("MPT auth/key answer lacks uuid or data")
        if len(data) > MAX_CHALLENGE:
            raise AuthError(
                f"MPT auth/key challenge is longer than {MAX_CHALLENGE} characters ({len(data)})"
            )
        if _CHALLENGE.fullmatch(data) is None:
            raise AuthError("MPT auth/key challenge has characters other than printable ASCII")
        try:
            signature = b64(await self._signer.sign(data.encode("utf-8")))
        except SigningError as exc:
            raise AuthError(
                f"signing the MPT challenge failed: {exc.reason}", kind=Failure.LOCAL
            ) from None
        logs.secrets.add(signature, dynamic=True)
        body = {uuid_key: uuid, "data": signature, **self._cfg.extra_fields}
        answer = await self._call("POST", "/auth/simpleSignIn", body)
        token = answer.get(self._cfg.token_field)
        if not isinstance(token, str) or not token:
            raise AuthError(f"MPT simpleSignIn answer has no {self._cfg.token_field!r}")
        return Grant(access_token=token, expires_in=self._lifetime(token))

    def _lifetime(self, token: str) -> float:
        exp = jwt_expiry(token)
        if exp is None:
            return self._cfg.token_ttl
        left = exp - time.time()
        if left <= 0:
            raise AuthError("MPT issued a token whose exp has already passed (check the clock)")
        return left

    async def refresh(self, refresh_token: str) -> Grant:
        raise InvalidGrant("MPT has no refresh grant")  # the manager then signs in again

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        where = f"MPT {path}"
        try:
            reply = await self._http.request(
                method, self._base + path, json_body=body, headers={"Accept": "application/json"}
            )
            raw, status = reply.body, reply.status
            wait = parse_retry_after(reply.headers.get("Retry-After"))
        except TransportError as exc:
            raise idp_error(where, exc) from None
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = None
        if status != 200:
            raise AuthError.answered(status, f"{where} answered {status}{_describe(data)}", wait)
        if not isinstance(data, dict):
            raise AuthError(f"{where} answered 200 without a JSON object")
        return data

    def renew_tls(self, ssl_context: ssl.SSLContext) -> None:
        self._http.renew_tls(ssl_context)

    async def close(self) -> None:
        await self._http.close()
        await self._signer.close()


def _describe(data: Any) -> str:
    """The MPT error body (``error_message``, ``code``, ``description``) in one line."""
    if not isinstance(data, dict):
        return ""
    parts = [str(data[k])[:200] for k in ("code", "error_message", "description") if data.get(k)]
    return ": " + " / ".join(parts) if parts else ""
