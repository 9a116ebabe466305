"""No secret, token or cookie is ever written: logs (debug level), /status, /metrics and the
sidecar's error bodies are collected from a run of every auth flow and searched."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path
from typing import Any

import aiohttp

from sidecar.sandbox.servers import SandboxStack
from tests.conftest import Kisc
from tests.test_app import SidecarProcess

NTB = "http://api.moex.com/ntb"
KISC = "http://ax.kisc.kz/etsfo/1.0.0/messages/"
JWT = re.compile(r"eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]+")


async def test_nothing_secret_is_written_anywhere(
    sandbox: SandboxStack, kisc: Kisc, sidecar_config: dict[str, Any],
    kisc_config: dict[str, Any], tmp_path: Path,
) -> None:
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
    issued = [*sandbox.idp.issued, *kisc.gateway.issued]
    assert len(issued) >= 8
    leaked = [t for t in issued if t in everything]
    assert not leaked, f"{len(leaked)} issued tokens leaked"
    assert not JWT.search(everything), JWT.search(everything)
