"""No secret, token or cookie is ever written: logs (debug level), /status, /metrics and the
sidecar's error bodies are collected from a run of every auth flow and searched."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.sandbox.demo import moex_registration_upstream, mpt_upstream
from sidecar.sandbox.moex import MoexStack, start_moex_registration
from sidecar.sandbox.mpt import MptApi, start_mpt
from sidecar.sandbox.registration import MSK
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.process import SidecarProcess
from tests.helpers.sidecars import Kisc

NTB = "http://api.moex.com/ntb"
KISC = "http://ax.kisc.kz/etsfo/1.0.0/messages/"
JWT = re.compile(r"eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]+")
# A base64 DER CMS signature starts with "MII" (a long SEQUENCE); none may be written down.
SIGNATURE = re.compile(r"MII[A-Za-z0-9+/]{200,}")
REGISTRATION = "http://play-apim.moex.com/client/v1/applications/"
MPT = "http://stage.ismet.kz/api/v3/true-api"


@pytest.fixture
async def signed_logins(sandbox: SandboxStack) -> AsyncIterator[tuple[MoexStack, MptApi, str]]:
    moex = await start_moex_registration(sandbox.pki, sandbox.idp)
    moex.registration.set_clock(datetime(2026, 11, 20, 12, 0, tzinfo=MSK))
    mpt, mpt_server = await start_mpt(sandbox.pki)
    try:
        yield moex, mpt, mpt_server.url
    finally:
        await mpt_server.stop()
        await moex.stop()


async def test_nothing_secret_is_written_anywhere(
    sandbox: SandboxStack, kisc: Kisc, sidecar_config: dict[str, Any],
    kisc_config: dict[str, Any], tmp_path: Path,
    signed_logins: tuple[MoexStack, MptApi, str],
) -> None:
    moex, mpt, mpt_url = signed_logins
    wrong_password = "Wr0ng-Passw0rd-31337"
    client_secret = "svc-S3CRET-2468"
    sandbox.idp.clients["svc"] = client_secret
    # A static token the API accepts: one the IdP issued, handed to the sidecar as a file.
    async with aiohttp.ClientSession() as session:
        async with session.post(
            sandbox.token_url, ssl=sandbox.pki.client_ssl_context(),
            data={"grant_type": "client_credentials", "client_id": "svc",
                  "client_secret": client_secret},
        ) as resp:
            static_token = (await resp.json())["access_token"]
    token_file = tmp_path / "static-token"
    token_file.write_text(static_token + "\n")
    p12_file = Path(kisc_config["tls"]["p12_password_file"])
    p12_password = (await asyncio.to_thread(p12_file.read_text)).strip()
    base = sidecar_config["upstreams"]["moex-ntb"]
    config = sidecar_config | {"log": {"level": "debug", "format": "json"}}
    config["upstreams"] = {
        "moex-ntb": base,
        "kisc": kisc_config,
        "static": {**base, "match": ["static.example"],
                   "auth": {"type": "static", "token_file": str(token_file)}},
        "service": {**base, "match": ["svc.example"],
                    "auth": {"type": "client_credentials", "token_url": sandbox.token_url,
                             "client_id": "svc", "client_secret": client_secret}},
        "broken-login": {**base, "match": ["broken.example"], "eager": False,
                         "timeouts": {"token_wait": 2},
                         "auth": {**base["auth"], "password": wrong_password,
                                  "password_file": None}},
    }
    config["upstreams"]["broken-login"]["auth"].pop("password_file")
    config["upstreams"]["moex-registration"] = moex_registration_upstream(
        moex, sandbox.token_url, sandbox.pki, tmp_path / "moex"
    )
    config["upstreams"]["mpt"] = mpt_upstream(mpt_url, mpt.key_path, sandbox.pki)
    proc = SidecarProcess(config, tmp_path)
    collected: list[str] = []
    try:
        await proc.start()
        await proc.wait_for("token_obtained")
        proxy = f"http://{proc.proxy}"
        async with aiohttp.ClientSession() as session:

            async def call(method: str, url: str, **kw: Any) -> int:
                async with session.request(method, url, proxy=proxy, **kw) as resp:
                    body = await resp.text()
                    if resp.status >= 400:
                        collected.append(body)
                    return resp.status

            cookie = {"Cookie": "session=c00kie-v4lue"}
            assert await call("GET", f"{NTB}/a", headers=cookie) == 200
            assert await call("GET", "http://static.example/ntb/c") == 200
            assert await call("GET", "http://svc.example/ntb/d") == 200
            sandbox.idp.revoke_sessions()
            assert await call("POST", f"{NTB}/b", data=b"payload") == 200  # replayed
            for key in ("S1", "S2"):
                sent = await call("POST", KISC, data=b"<D/>", headers={"x-idempotency-key": key})
                assert sent == 202
                kisc.gateway.expire_tokens()  # the second one is refused (900901) and replayed
            kisc.gateway.force_fault(900908)
            assert await call("GET", KISC) == 403
            assert await call("POST", KISC, data=b"<D/>") == 400
            assert await call("GET", "http://broken.example/ntb/e") == 503
            registration = await call(
                "POST", REGISTRATION, data=b'<DOC DOC_DATE="2026-11-20" DOC_NUM="9"/>',
                headers={"Content-Type": "application/xml"},
            )
            assert registration == 202
            assert await call("GET", f"{MPT}/cises/info") == 200
            assert await call("GET", "http://unknown.example/") == 403
            for path in ("status", "metrics", "readyz"):
                async with session.get(f"http://{proc.admin}/{path}") as resp:
                    collected.append(await resp.text())
        proc.signal(signal.SIGTERM)
        assert await proc.wait(timeout=20) == 0
    finally:
        await proc.kill()

    everything = "\n".join([*proc.raw, *collected])
    assert "token_fetch_failed" in everything and "Invalid user credentials" in everything
    secrets = {
        "ntb password": sandbox.idp.users["trader"],
        "kisc password": kisc.gateway.users["bank-user"],
        "consumer secret": kisc.gateway.consumer_secret,
        "p12 password": p12_password,
        "static token": static_token,
        "client secret": client_secret,
        "wrong password": wrong_password,
        "app cookie": "c00kie-v4lue",
    }
    for name, secret in secrets.items():
        assert secret not in everything, f"{name} leaked"
    issued = [*sandbox.idp.issued, *kisc.gateway.issued, *moex.passport.issued, *mpt.issued]
    assert len(issued) >= 10 and moex.passport.issued and mpt.issued
    leaked = [t for t in issued if t in everything]
    assert not leaked, f"{len(leaked)} issued tokens leaked"
    assert not JWT.search(everything), JWT.search(everything)
    assert not SIGNATURE.search(everything), "a base64 CMS signature was written"
    assert "passport" in sandbox.idp.stats()["by_grant"] and mpt.stats()["signins"] == 1
