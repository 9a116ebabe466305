"""The steps of one upstream: its target and IdP endpoints (see :mod:`.network`), one real
login through the flow the sidecar runs, and an optional probe request with the token.

At most one login per upstream, and no refresh: safe to run beside a running sidecar (an
IdP that counts failed logins sees one more). Tokens stay in memory; only their lifetime and
whether a refresh token came are reported.
"""

from __future__ import annotations

import ssl
import time
from urllib.parse import urlsplit

from sidecar.auth.base import AuthError, Failure, Grant
from sidecar.auth.factory import auth_flow
from sidecar.auth.static import StaticToken
from sidecar.config.auth import AuthBase, StaticAuth, TokenEndpointAuth, credential_urls
from sidecar.config.egress import egress_dialer
from sidecar.config.errors import SetupError
from sidecar.config.models import Upstream
from sidecar.config.sections import Tls
from sidecar.doctor.network import Endpoint, check_endpoint
from sidecar.doctor.report import Step
from sidecar.http1.errors import TransportError
from sidecar.http1.fetch import Fetcher
from sidecar.tls import client_context, client_identity

_FIXES = {
    Failure.REFUSED: "the IdP refused the login: check username, password, client_id and "
    "client_secret (and the files they are read from); too many failed logins may lock the "
    "account",
    Failure.UNAVAILABLE: "the IdP could not answer: see the IdP's network steps above, or "
    "try again later (test stands have maintenance hours)",
    Failure.BAD_ANSWER: "the IdP answered something unusable: is token_url the token "
    "endpoint?",
    Failure.LOCAL: "a step of the sidecar's own failed (signing): see the reason",
}


def _endpoint(name: str, url: str, tls: Tls, ctx: ssl.SSLContext, timeout: float,
              tls_field: str) -> Endpoint:
    identity = client_identity(tls)
    expired = None
    if identity is not None and identity.days_left() < 0:
        expired = f"{identity.not_after:%Y-%m-%d %H:%M} UTC"
    return Endpoint(
        upstream=name,
        url=url,
        ssl=ctx if urlsplit(url).scheme == "https" else None,
        timeout=timeout,
        tls_field=tls_field,
        ca_label=f"ca_file {tls.ca_file}" if tls.ca_file else "the system CA store",
        client_cert=identity.subject if identity else None,
        client_cert_expired=expired,
    )


async def check_upstream(name: str, upstream: Upstream, probe: str | None) -> list[Step]:
    prefix = f"upstreams.{name}"
    try:
        ctx = client_context(upstream.tls)
        auth_tls = upstream.tls
        auth_ctx = ctx
        if isinstance(upstream.auth, AuthBase) and upstream.auth.tls is not None:
            auth_tls = upstream.auth.tls
            auth_ctx = client_context(auth_tls)
    except SetupError as exc:
        return [Step(name, "config", prefix, "fail", str(exc), "run `sidecar check`")]

    steps: list[Step] = []
    target = _endpoint(name, upstream.target, upstream.tls, ctx, upstream.timeouts.connect,
                       f"{prefix}.tls")
    target_ok = await check_endpoint(target)
    steps += target.steps

    auth = upstream.auth
    idp_ok = True
    auth_field = f"{prefix}.auth.tls" if auth_tls is not upstream.tls else f"{prefix}.tls"
    timeout = auth.timeout if isinstance(auth, AuthBase) else upstream.timeouts.connect
    for fieldname, url in credential_urls(auth).items():
        ep = _endpoint(name, url, auth_tls, auth_ctx, timeout, auth_field)
        answered = await check_endpoint(ep)
        steps += [s for s in ep.steps if not _repeat(s, steps)]
        idp_ok = idp_ok and answered
        if answered and ep.status is not None:
            steps.append(_endpoint_answer(name, fieldname, url, ep.status))
            idp_ok = idp_ok and ep.status < 500

    token, login_steps = await _login(name, upstream, ctx, idp_ok)
    steps += login_steps
    if probe is not None:
        steps.append(await _probe(name, upstream, ctx, token, probe, target_ok))
    return steps


def _repeat(step: Step, earlier: list[Step]) -> bool:
    """The IdP on the target's host: its DNS/TCP/TLS steps were already shown."""
    return step.status == "ok" and any(
        (s.step, s.where, s.status) == (step.step, step.where, "ok") for s in earlier
    )


def _endpoint_answer(name: str, fieldname: str, url: str, status: int) -> Step:
    where = f"auth.{fieldname}"
    if status >= 500:
        return Step(name, "token_endpoint", where, "fail", f"answers HTTP {status}",
                    "the IdP itself fails: try later, or ask its operators")
    if status == 404:
        return Step(name, "token_endpoint", where, "warn", "answers HTTP 404 to HEAD",
                    f"check the path of {where} ({urlsplit(url).path})")
    return Step(name, "token_endpoint", where, "ok", f"answers (HTTP {status} to HEAD)")


async def _login(
    name: str, upstream: Upstream, ctx: ssl.SSLContext, idp_ok: bool
) -> tuple[str | None, list[Step]]:
    auth = upstream.auth
    if isinstance(auth, StaticAuth):
        source = StaticToken(name, auth)
        await source.start()
        token = source.peek()
        if token is None:
            return None, [Step(name, "login", "auth", "fail", "the static token cannot be used",
                               "check auth.token or the token_file's content")]
        return token.value, [Step(name, "login", "auth", "ok", "static token (no login)")]
    if not idp_ok:
        return None, [Step(name, "login", "auth", "skip", "the IdP is not reachable (above)")]
    where = "auth.token_url" if isinstance(auth, TokenEndpointAuth) else "auth"
    try:
        flow = auth_flow(auth, ctx, egress_dialer(upstream.egress_proxy))
    except SetupError as exc:
        return None, [Step(name, "login", where, "fail", str(exc), "run `sidecar check`")]
    started = time.monotonic()
    try:
        grant: Grant = await flow.login()
    except AuthError as exc:
        return None, [Step(name, "login", where, "fail",
                           f"{exc.kind.value}: {exc.reason}", _FIXES[exc.kind])]
    finally:
        await flow.close()
    took = time.monotonic() - started
    lifetime = f"{grant.expires_in:g} s" if grant.expires_in is not None else "not given"
    detail = f"{auth.type} login in {took * 1000:.0f} ms; token lifetime {lifetime}; " \
        f"refresh token: {'yes' if grant.refresh_token else 'no'}"
    step = Step(name, "login", where, "ok", detail)
    if grant.expires_in is not None and grant.expires_in < 60:
        step = Step(name, "login", where, "warn", detail,
                    "a token living under a minute means a login for nearly every request")
    return grant.access_token, [step]


async def _probe(
    name: str, upstream: Upstream, ctx: ssl.SSLContext, token: str | None, path: str,
    target_ok: bool,
) -> Step:
    url = upstream.target + "/" + path.lstrip("/")
    if not target_ok:
        return Step(name, "probe", url, "skip", "the target is not reachable (above)")
    if token is None:
        return Step(name, "probe", url, "skip", "no token (the login failed)")
    headers = {"Authorization": f"Bearer {token}"}
    headers.update({k: v.replace("{uuid}", "doctor").replace("{now}", "")
                    for k, v in upstream.headers.items()})
    fetcher = Fetcher(ctx, upstream.timeouts.read, egress_dialer(upstream.egress_proxy))
    try:
        answer = await fetcher.request("GET", url, headers=headers)
    except TransportError as exc:
        return Step(name, "probe", url, "fail", exc.describe(), "see the target's steps above")
    finally:
        await fetcher.close()
    if answer.status in (401, 403):
        return Step(name, "probe", url, "fail", f"HTTP {answer.status}: the API refused the "
                    "token", "the token is for another audience or lacks a role: check scope "
                    "and client_id, and the account's rights for this API")
    if answer.status >= 400:
        return Step(name, "probe", url, "fail", f"HTTP {answer.status}",
                    "the path may not exist: probe a path the API serves")
    return Step(name, "probe", url, "ok", f"HTTP {answer.status}, {len(answer.body)} bytes")
