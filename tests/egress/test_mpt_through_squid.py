"""MPT's signed login (GET auth/key, POST simpleSignIn) and its API through a real Squid:
every leg is a CONNECT tunnel, and the challenge, the signature and the token stay inside."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from sidecar.sandbox.mpt import start_mpt
from sidecar.sandbox.servers import SandboxStack
from tests.egress.conftest import egress_block
from tests.egress.squid import Squid
from tests.helpers.sidecars import SidecarFactory, proxy_url

API = "http://stage.ismet.kz/api/v3/true-api"


async def test_mpt_signin_and_api_go_through_squid(
    squid: Squid, sandbox: SandboxStack, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    api, server = await start_mpt(sandbox.pki)
    try:
        signer = sandbox.pki.issue_client("mpt-signer", "Romashka LLP")
        start = len(squid.log())
        sidecar = await make_sidecar(
            egress_proxy=egress_block(squid.url, tmp_path),
            upstreams={"mpt": {
                "match": ["stage.ismet.kz"],
                "target": server.url,
                "tls": {"ca_file": str(sandbox.pki.ca_file)},
                "auth": {"type": "mpt_signin", "base_url": server.url + "/api/v3/true-api",
                         "signer": {"type": "pkcs7", "p12_file": str(signer.p12_file),
                                    "p12_password": signer.p12_password},
                         "extra_fields": {"inn": "123456789012"}},
            }},
        )
        async with aiohttp.ClientSession() as session, session.get(
            f"{API}/cises/info?cis=X", proxy=proxy_url(sidecar)
        ) as resp:
            assert resp.status == 200
            seen = await resp.json(content_type=None)
        token = seen["headers"]["authorization"].removeprefix("Bearer ")
        assert api.is_token_valid(token)
        assert api.stats()["signins"] == 1
        await sidecar.stop(grace=1.0)
    finally:
        await server.stop()
    line = f"200 CONNECT 127.0.0.1:{server.port}"
    log = squid.wait_for_log(line)[start:]
    assert log.count(line) >= 3, log  # auth/key, simpleSignIn, the API connection
    assert token not in log and token[-40:] not in log
