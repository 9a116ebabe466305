"""What the signer is asked to sign comes from the network: the MPT challenge and the Passport
cookie are bounded in size and characters before any signature is made."""

from __future__ import annotations

import json
import ssl
from typing import Any

import pytest
from multidict import CIMultiDict

from sidecar.auth.base import AuthError
from sidecar.auth.moex_passport import MAX_PASSPORT_TOKEN, PassportClient
from sidecar.auth.mpt import MAX_CHALLENGE, MptSigninFlow
from sidecar.config.auth import CommandSigning, MptSigninAuth
from sidecar.http1.fetch import Fetched


class ScriptedHttp:
    """Stands in for an IdP session: answers the scripted replies in order."""

    timeout = 1.0

    def __init__(self, *replies: Fetched) -> None:
        self.replies = list(replies)
        self.calls: list[tuple[str, str]] = []

    async def request(self, method: str, url: str, **kwargs: Any) -> Fetched:
        self.calls.append((method, url))
        return self.replies.pop(0)

    async def close(self) -> None:
        return None


class RecordingSigner:
    detached = False

    def __init__(self) -> None:
        self.signed: list[bytes] = []

    async def sign(self, data: bytes) -> bytes:
        self.signed.append(data)
        return b"\x30\x00"

    async def close(self) -> None:
        return None


def _json(status: int, body: object) -> Fetched:
    return Fetched(status, CIMultiDict({"Content-Type": "application/json"}),
                 json.dumps(body).encode())


def _mpt(http: ScriptedHttp, signer: RecordingSigner) -> MptSigninFlow:
    cfg = MptSigninAuth(
        type="mpt_signin",
        base_url="https://mpt.test/api",
        signer=CommandSigning(type="command", command={"argv": ["true"]}),  # type: ignore[arg-type]
    )
    flow = MptSigninFlow(cfg, ssl.create_default_context(), signer)  # type: ignore[arg-type]
    flow._http = http  # type: ignore[assignment]
    return flow


BAD_CHALLENGES = {
    "too_long": "a" * (MAX_CHALLENGE + 1),
    "crlf": "abc\r\ndef",
    "nul": "abc\x00def",
    "non_ascii": "вызов-abc",
}


@pytest.mark.parametrize("data", BAD_CHALLENGES.values(), ids=BAD_CHALLENGES.keys())
async def test_mpt_challenge_out_of_bounds_is_never_signed(data: str) -> None:
    http = ScriptedHttp(_json(200, {"uuid": "u-1", "data": data}))
    signer = RecordingSigner()
    with pytest.raises(AuthError) as caught:
        await _mpt(http, signer).login()
    assert "MPT auth/key" in caught.value.reason and "challenge" in caught.value.reason
    assert data not in caught.value.reason
    assert signer.signed == []
    assert [m for m, _ in http.calls] == ["GET"]  # no sign-in attempted


async def test_mpt_challenge_within_bounds_is_signed() -> None:
    data = "Ab9 +/=-_.~!#$%&()*,:;<>?@[]^{|}" + "x" * 100
    http = ScriptedHttp(_json(200, {"uuid": "u-1", "data": data}), _json(200, {"token": "t0k"}))
    signer = RecordingSigner()
    grant = await _mpt(http, signer).login()
    assert signer.signed == [data.encode()]
    assert grant.access_token == "t0k"


def _passport(*cookies: str, status: int = 302) -> tuple[PassportClient, ScriptedHttp]:
    client = PassportClient("https://passport.test/authenticate", "u", "p",
                            ssl.create_default_context(), 1.0)
    headers: CIMultiDict[str] = CIMultiDict()
    for cookie in cookies:
        headers.add("Set-Cookie", cookie)
    http = ScriptedHttp(Fetched(status, headers, b""))
    client._http = http  # type: ignore[assignment]
    return client, http


BAD_COOKIES = {
    "too_long": "A" * (MAX_PASSPORT_TOKEN + 1),
    "non_ascii": "токен+/==",
    "control": "abc\x01def",
    "backslash": "abc\\def",
}


@pytest.mark.parametrize("value", BAD_COOKIES.values(), ids=BAD_COOKIES.keys())
async def test_passport_cookie_out_of_bounds_is_refused(value: str) -> None:
    client, _ = _passport(f"MicexPassportCert={value}; Path=/")
    with pytest.raises(AuthError) as caught:
        await client.fetch()
    assert "MicexPassportCert" in caught.value.reason
    assert value not in caught.value.reason


async def test_passport_cookie_base64_is_taken_as_is() -> None:
    value = "AbC+/x09" * 100 + "=="
    client, _ = _passport(f"MicexPassportCert={value}; Path=/; HttpOnly")
    assert await client.fetch() == value
