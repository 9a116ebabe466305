"""IdP faults for every login flow: WSO2 (KISC), MOEX Passport (faults at the Passport and at
the SSO), MPT (faults at ``auth/key`` and at ``simpleSignIn``), and the cases the Keycloak
matrix in ``test_idp_faults.py`` leaves out (down, slow, ``expires_in`` missing or huge, a
rejected refresh token). ``faulty_idp.py`` says what each case checks.

How the faults map onto each flow:

* **Token endpoints** (Keycloak, WSO2, the MOEX SSO): down, hanging, slow, 500, a non-JSON
  body, JSON without ``access_token``, ``expires_in`` missing / zero / negative / huge /
  infinite, ``invalid_grant`` on everything (outage), ``invalid_grant`` on the refresh grant
  only (the login still works: the app must not notice), 429 with ``Retry-After``. The
  rewrites keep the rest of the real answer, rotated refresh token included.
* **MOEX Passport**: down, hanging, slow, 500, 401 (login rejected), 429 with
  ``Retry-After``, and a 200 without the ``MicexPassportCert`` cookie. Passport takes part
  only in full logins, so in these cases the SSO rejects every refresh token throughout and
  each renewal is a full Passport-and-signature login. Passport has no JSON and no expiry.
* **MPT** has no ``expires_in`` and no refresh grant: a token's lifetime is its JWT ``exp``
  (``token_ttl`` when it has none). So "expires_in missing / zero / negative / huge" become a
  JWT without ``exp`` (the configured ``token_ttl`` of 300 s applies), ``exp`` equal to now,
  ``exp`` in the past, ``exp`` in the year 3000 and an infinite ``exp`` (both bounded to a
  day); "invalid_grant" becomes MPT's 403 refusal of the signature; "non-JSON" and "no
  access_token" become a non-JSON answer and an answer without ``uuid``/``data`` (auth/key)
  or ``token`` (simpleSignIn). "Down" is the whole auth host: both calls go to it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sidecar.sandbox.demo import (
    kisc_upstream,
    moex_registration_upstream,
    mpt_upstream,
    sandbox_config,
)
from sidecar.sandbox.moex import start_moex_registration
from sidecar.sandbox.mpt import MptApi, start_mpt
from sidecar.sandbox.pki import Pki
from sidecar.sandbox.servers import SandboxStack
from sidecar.sandbox.wso2 import issue_kisc_client, start_wso2
from tests.reliability.faulty_idp import (
    MAX_LIFETIME,
    TTL,
    Case,
    Fault,
    FaultyIdp,
    Matrix,
    Probe,
    Rewrite,
    drop,
    json_answer,
    put,
)

pytestmark = pytest.mark.timeout(120)

INVALID_GRANT = {"error": "invalid_grant", "error_description": "Session not active"}
HUGE = 100 * 365 * 86400  # a hundred years
INF = float("inf")  # written as 1e400, a valid JSON number that no float can hold


def token_endpoint_faults(*, missing_lifetime: float, refresh: bool = True) -> list[Fault]:
    """The token endpoint matrix. ``missing_lifetime``: what the sidecar should take for a
    token without expires_in (the JWT's exp, or its 300 s default for opaque tokens)."""
    faults = [
        Fault("down", "down", reason="cannot connect"),
        Fault("hanging", "hang", reason="no answer within 1 s"),
        Fault("slow", "slow", reason="no answer within 1 s"),
        Fault("500", **json_answer(500, {"error": "server_error"}, reason="answered 500")),
        Fault("non-JSON body", "answer", body=b"<html>maintenance</html>",
              content_type="text/html", reason="answered 200 without a JSON object"),
        Fault("no access_token", "rewrite", rewrite=drop("access_token"),
              reason="without an access_token"),
        Fault("expires_in missing", "rewrite", rewrite=drop("expires_in"), outage=False,
              max_expires_in=missing_lifetime),
        Fault("expires_in zero", "rewrite", rewrite=put("expires_in", 0),
              reason="unusable expires_in: 0"),
        Fault("expires_in negative", "rewrite", rewrite=put("expires_in", -5),
              reason="unusable expires_in: -5"),
        Fault("expires_in huge", "rewrite", rewrite=put("expires_in", HUGE), outage=False,
              max_expires_in=MAX_LIFETIME),
        Fault("expires_in infinite", "rewrite", rewrite=put("expires_in", INF), outage=False,
              max_expires_in=MAX_LIFETIME),
        Fault("invalid_grant", **json_answer(400, INVALID_GRANT, reason="invalid_grant")),
        Fault("429 with Retry-After", **json_answer(
            429, {"error": "temporarily_unavailable"}, headers={"Retry-After": "2"},
            reason="answered 429", backoff_cap=0.5, min_retry=2)),
    ]
    if refresh:
        faults.append(Fault("invalid_grant on refresh only", grant="refresh_token",
                            outage=False, **json_answer(400, INVALID_GRANT)))
    return faults


class Proxies:
    """Starts the faulty proxies of one test, all with one server certificate."""

    def __init__(self, pki: Pki) -> None:
        self.pki = pki
        self.server_ssl = pki.server_ssl_context(
            pki.issue_server("faulty-idp", ("127.0.0.1", "localhost"))
        )
        self.started: list[FaultyIdp] = []

    async def __call__(self, origin: str, client_ssl: Any = None, **kw: Any) -> FaultyIdp:
        idp = FaultyIdp(origin, self.server_ssl, client_ssl or self.pki.client_ssl_context(),
                        **kw)
        self.started.append(idp)
        await idp.start()
        return idp


@pytest.fixture
async def proxy(sandbox: SandboxStack) -> AsyncIterator[Proxies]:
    proxies = Proxies(sandbox.pki)
    try:
        yield proxies
    finally:
        for idp in proxies.started:
            await idp.stop()


def _only(faults: list[Fault], *names: str) -> list[Fault]:
    chosen = [f for f in faults if f.name in names]
    assert len(chosen) == len(names)
    return chosen


async def test_keycloak_flows_down_slow_and_odd_lifetimes(
    sandbox: SandboxStack, proxy: Proxies, tmp_path: Path
) -> None:
    """The Keycloak flows' cases not in test_idp_faults.py: down, slow, expires_in missing /
    huge / infinite, and (oidc_password) a rejected refresh token while the login works."""
    sandbox.idp.access_ttl = TTL
    sandbox.idp.clients["svc"] = "svc-secret"
    ntb = sandbox_config(sandbox, tmp_path / "secrets")["upstreams"]["moex-ntb"]
    matrix = Matrix(tmp_path)
    faults = token_endpoint_faults(missing_lifetime=TTL)
    names = ("down", "slow", "expires_in missing", "expires_in huge", "expires_in infinite")
    plan = [("oidc_password", f) for f in _only(faults, *names, "invalid_grant on refresh only")]
    plan += [("client_credentials", f) for f in _only(faults, *names)]
    for i, (kind, fault) in enumerate(plan):
        idp = await proxy(sandbox.idp_server.url)
        auth = dict(ntb["auth"], token_url=idp.url(sandbox.token_url))
        if kind == "client_credentials":
            auth = {"type": kind, "token_url": auth["token_url"], "client_id": "svc",
                    "client_secret": "svc-secret"}
        host = f"c{i:02d}.ntb.test"
        matrix.add(Case(
            f"{kind}-{i:02d}", fault, idp, {**ntb, "match": [host], "auth": auth},
            Probe("GET", f"http://{host}/ntb/probe"),
        ))
    await matrix.run()


async def test_wso2_password(sandbox: SandboxStack, proxy: Proxies, tmp_path: Path) -> None:
    gateway, server = await start_wso2(sandbox.pki, access_ttl=TTL)
    try:
        client = issue_kisc_client(sandbox.pki)
        base = kisc_upstream(gateway, server.url, sandbox.pki, client, tmp_path / "kisc")
        matrix = Matrix(tmp_path)
        # Opaque tokens: without expires_in the sidecar assumes 300 s, and the gateway's 401
        # (fault 900901) when the token dies makes it log in again and replay.
        for i, fault in enumerate(token_endpoint_faults(missing_lifetime=300)):
            if fault.action in ("slow", "rewrite") and fault.outage:
                # The gateway used the refresh token, and so revoked the old access token,
                # before the answer was lost or spoiled: the app gets the 503 at once.
                fault = replace(fault, revokes=True)
            # The proxy logs in with the bank's certificate: WSO2 checks its CN.
            idp = await proxy(server.url, sandbox.pki.client_ssl_context(client))
            host = f"c{i:02d}.kisc.test"
            # A scope per case: WSO2 keeps one token per consumer, user and scope, and the
            # cases must not renew (and so revoke) each other's tokens.
            auth = dict(base["auth"], token_url=idp.url(base["auth"]["token_url"]),
                        scope=f"case{i}")
            matrix.add(Case(
                f"kisc-{i:02d}", fault, idp, {**base, "match": [host], "auth": auth},
                Probe("GET", f"http://{host}/etsfo/1.0.0/messages/"),
            ))
        await matrix.run()
    finally:
        await server.stop()


@pytest.fixture
async def moex(sandbox: SandboxStack) -> AsyncIterator[Any]:
    stack = await start_moex_registration(sandbox.pki, sandbox.idp)
    # Many cases at once: the stand's 1 request/s per client and its hours are not tested here.
    stack.registration.min_interval = 0
    stack.registration.hours = None
    try:
        yield stack
    finally:
        await stack.stop()


async def test_moex_passport(
    sandbox: SandboxStack, moex: Any, proxy: Proxies, tmp_path: Path
) -> None:
    sandbox.idp.access_ttl = TTL
    base = moex_registration_upstream(moex, sandbox.token_url, sandbox.pki, tmp_path / "moex")
    base.pop("rate_limit")
    matrix = Matrix(tmp_path)
    refresh_rejected = Fault("refresh rejected", grant="refresh_token",
                             **json_answer(400, INVALID_GRANT))
    passport_faults = [
        Fault("Passport down", "down", reason="MOEX Passport: cannot connect"),
        Fault("Passport hanging", "hang", reason="MOEX Passport: no answer within 1 s"),
        Fault("Passport slow", "slow", reason="MOEX Passport: no answer within 1 s"),
        Fault("Passport 500", "answer", status=500, body=b"Internal Server Error\n",
              content_type="text/plain", reason="MOEX Passport answered 500"),
        Fault("Passport 401", "answer", status=401, body=b"Authentication required\n",
              content_type="text/plain", reason="login or password rejected"),
        Fault("Passport 429 with Retry-After", "answer", status=429, body=b"Slow down\n",
              content_type="text/plain", headers={"Retry-After": "2"},
              reason="MOEX Passport answered 429", backoff_cap=0.5, min_retry=2),
        Fault("Passport 200 without the cookie", "answer", body=b"granted\n",
              content_type="text/plain", reason="without a MicexPassportCert cookie"),
    ]
    sso_faults = token_endpoint_faults(missing_lifetime=TTL)
    for i, fault in enumerate([*passport_faults, *sso_faults]):
        at_passport = fault in passport_faults
        passport = await proxy(moex.passport_server.url)
        standing = refresh_rejected if at_passport else None
        sso = await proxy(sandbox.idp_server.url, standing=standing)
        host = f"c{i:02d}.reg.test"
        auth = dict(base["auth"], passport_url=passport.url(moex.passport_url),
                    token_url=sso.url(sandbox.token_url))
        matrix.add(Case(
            f"passport-{i:02d}", fault, passport if at_passport else sso,
            {**base, "match": [host], "auth": auth},
            Probe("POST", f"http://{host}/client/v1/applications/", b"<DOC/>",
                  {"Content-Type": "application/xml"}, frozenset({202})),
            proxies=[passport, sso],
        ))
    await matrix.run()


def mpt_exp(api: MptApi, exp: float | None) -> Rewrite:
    """A rewrite of simpleSignIn's answer: the same token, re-signed by the emulator with
    ``exp`` set (``exp`` below 1e6: that many seconds from now) or removed (None)."""

    def rewrite(data: dict[str, Any]) -> dict[str, Any]:
        claims = api.introspect(data["token"])
        assert claims is not None
        claims.pop("exp")
        if exp is not None:
            claims["exp"] = time.time() + exp if abs(exp) < 1e6 else exp
        return {**data, "token": api._sign(claims)}

    return rewrite


async def test_mpt_signin(sandbox: SandboxStack, proxy: Proxies, tmp_path: Path) -> None:
    api, server = await start_mpt(sandbox.pki, token_ttl=TTL)
    try:
        base = mpt_upstream(server.url, api.key_path, sandbox.pki)
        key, signin = "/auth/key", "/auth/simpleSignIn"
        refused = {"error_message": "Ошибка авторизации. Код ошибки: 2", "code": 2,
                   "description": "The signature is not a valid attached CMS"}
        faults = [
            Fault("auth host down", "down", reason="MPT /auth/key: cannot connect"),
            *(
                Fault(f"{where} {f.name}", f.action, reason=f"MPT {where}{f.reason}",
                      status=f.status, body=f.body, content_type=f.content_type,
                      headers=f.headers, path=where, backoff_cap=f.backoff_cap,
                      min_retry=f.min_retry, rewrite=f.rewrite)
                for where in (key, signin)
                for f in (
                    Fault("hanging", "hang", reason=": no answer within 1 s"),
                    Fault("slow", "slow", reason=": no answer within 1 s"),
                    Fault("500", **json_answer(500, {"error_message": "Internal error",
                                                     "code": 500}, reason=" answered 500")),
                    Fault("non-JSON body", "answer", body=b"<html>maintenance</html>",
                          content_type="text/html", reason=" answered 200 without a JSON object"),
                    Fault("429 with Retry-After", **json_answer(
                        429, {"error_message": "Too many requests", "code": 429},
                        headers={"Retry-After": "2"}, reason=" answered 429",
                        backoff_cap=0.5, min_retry=2)),
                )
            ),
            Fault("auth/key without data", "rewrite", rewrite=drop("data"), path=key,
                  reason="MPT auth/key answer lacks uuid or data"),
            Fault("simpleSignIn without token", "rewrite", rewrite=drop("token"), path=signin,
                  reason="MPT simpleSignIn answer has no 'token'"),
            Fault("simpleSignIn 403 signature refused", path=signin, **json_answer(
                403, refused, reason="MPT /auth/simpleSignIn answered 403: 2")),
            Fault("exp missing", "rewrite", rewrite=mpt_exp(api, None), path=signin,
                  outage=False, max_expires_in=300),
            Fault("exp now", "rewrite", rewrite=mpt_exp(api, 0), path=signin,
                  reason="exp has already passed"),
            Fault("exp in the past", "rewrite", rewrite=mpt_exp(api, -60), path=signin,
                  reason="exp has already passed"),
            Fault("exp in the year 3000", "rewrite", rewrite=mpt_exp(api, 32_503_680_000),
                  path=signin, outage=False, max_expires_in=MAX_LIFETIME),
            Fault("exp infinite", "rewrite", rewrite=mpt_exp(api, INF), path=signin,
                  outage=False, max_expires_in=MAX_LIFETIME),
        ]
        matrix = Matrix(tmp_path)
        for i, fault in enumerate(faults):
            idp = await proxy(server.url)
            host = f"c{i:02d}.mpt.test"
            auth = dict(base["auth"], base_url=idp.url(base["auth"]["base_url"]), token_ttl=300)
            matrix.add(Case(
                f"mpt-{i:02d}", fault, idp, {**base, "match": [host], "auth": auth},
                Probe("GET", f"http://{host}/api/v3/true-api/cises/info"),
            ))
        await matrix.run()
    finally:
        await server.stop()
