"""MOEX client registration through a real Squid: the Passport call (Basic credentials in,
token cookie out), the token call and the API each go through a CONNECT tunnel."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import aiohttp

from sidecar.sandbox.demo import moex_registration_upstream
from sidecar.sandbox.moex import start_moex_registration
from sidecar.sandbox.registration import MSK
from sidecar.sandbox.servers import SandboxStack
from tests.egress.conftest import egress_block
from tests.egress.squid import Squid
from tests.helpers.sidecars import SidecarFactory, proxy_url

DOCUMENT = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<CLIENT_REGISTRATION DOC_DATE="2026-11-20" '
    b'DOC_NUM="7">\n  <CLIENT TYPE="UL" INN="7701234567" NAME="Romashka"/>\n'
    b"</CLIENT_REGISTRATION>\n"
)


async def test_passport_login_and_registration_go_through_squid(
    squid: Squid, sandbox: SandboxStack, make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    moex = await start_moex_registration(sandbox.pki, sandbox.idp)
    moex.registration.set_clock(datetime(2026, 11, 20, 12, 0, tzinfo=MSK))  # business hours
    try:
        start = len(squid.log())
        sidecar = await make_sidecar(
            egress_proxy=egress_block(squid.url, tmp_path),
            upstreams={"registration": moex_registration_upstream(
                moex, sandbox.token_url, sandbox.pki, tmp_path / "moex")},
        )
        async with aiohttp.ClientSession() as session, session.post(
            "http://play-apim.moex.com/client/v1/applications/", data=DOCUMENT,
            headers={"Content-Type": "application/xml"}, proxy=proxy_url(sidecar),
        ) as resp:
            assert resp.status == 202, await resp.text()
        assert sandbox.idp.stats()["by_grant"].get("passport") == 1
        assert moex.registration.document("2026-11-20", "7") == DOCUMENT
        passport_token = moex.passport.issued[-1]
        await sidecar.stop(grace=1.0)
        passport = f"200 CONNECT 127.0.0.1:{moex.passport_server.port}"
        api = f"200 CONNECT 127.0.0.1:{moex.registration_server.port}"
        log = squid.wait_for_log(api)[start:]
    finally:
        await moex.stop()
    assert passport in log and api in log, log
    assert passport_token not in log and "Romashka" not in log
