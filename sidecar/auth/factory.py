"""Building an upstream's token source from its ``auth`` block. Each dialect's module is
imported when a config uses it: a sidecar loads only the login flows it runs."""

from __future__ import annotations

import ssl

from sidecar.auth.base import (
    AnyUnauthorized,
    AuthFlow,
    RejectionPolicy,
    TokenEvents,
    TokenSource,
)
from sidecar.auth.manager import TokenManager
from sidecar.auth.oauth import TokenEndpoint
from sidecar.auth.static import StaticToken
from sidecar.config.auth import (
    AuthBase,
    ClientCredentialsAuth,
    JsonLoginAuth,
    MoexPassportAuth,
    MptSigninAuth,
    OidcPasswordAuth,
    StaticAuth,
    TokenEndpointAuth,
    Wso2PasswordAuth,
)
from sidecar.config.egress import egress_dialer
from sidecar.config.models import Upstream
from sidecar.http1.dial import Dialer
from sidecar.store.base import Coordinator
from sidecar.tls import client_context


def token_source(
    name: str,
    upstream: Upstream,
    upstream_ssl: ssl.SSLContext,
    events: TokenEvents | None = None,
    shared: Coordinator | None = None,
) -> TokenSource:
    auth = upstream.auth
    if isinstance(auth, StaticAuth):
        return StaticToken(name, auth, events)
    flow = auth_flow(auth, upstream_ssl, egress_dialer(upstream.egress_proxy))
    return TokenManager(
        name,
        flow,
        token_wait=upstream.timeouts.token_wait,
        backoff_cap=auth.backoff_cap,
        refused_backoff=auth.refused_backoff,
        refused_backoff_cap=auth.refused_backoff_cap,
        events=events,
        shared=shared,
    )


def auth_flow(
    auth: AuthBase, upstream_ssl: ssl.SSLContext, dialer: Dialer | None = None
) -> AuthFlow:
    """The login flow of ``auth``; its IdP calls go through ``dialer``'s egress proxy when
    given (the signer's own calls, to a local NCANode, always go direct)."""
    # The token call uses the upstream's TLS (client certificate included) unless auth.tls says
    # otherwise: KISC wants the same certificate on both legs.
    ctx = client_context(auth.tls) if auth.tls is not None else upstream_ssl
    if isinstance(auth, MptSigninAuth):
        from sidecar.auth.mpt import MptSigninFlow
        from sidecar.signing import make_signer

        signer = make_signer(auth.signer, detached_default=False)
        return MptSigninFlow(auth, ctx, signer, dialer)
    if isinstance(auth, JsonLoginAuth):
        from sidecar.auth.json_login import JsonLoginFlow

        return JsonLoginFlow(auth, ctx, dialer)
    assert isinstance(auth, TokenEndpointAuth)
    endpoint = TokenEndpoint(auth.token_url, ctx, auth.timeout, dialer)
    if isinstance(auth, OidcPasswordAuth):
        from sidecar.auth.keycloak import PasswordFlow

        return PasswordFlow(auth, endpoint)
    if isinstance(auth, ClientCredentialsAuth):
        from sidecar.auth.client_credentials import ClientCredentialsFlow

        return ClientCredentialsFlow(auth, endpoint)
    if isinstance(auth, Wso2PasswordAuth):
        from sidecar.auth.wso2 import Wso2PasswordFlow

        return Wso2PasswordFlow(auth, endpoint)
    if isinstance(auth, MoexPassportAuth):
        from sidecar.auth.moex_passport import MoexPassportFlow, PassportClient
        from sidecar.signing import make_signer

        passport = PassportClient(
            auth.passport_url, auth.username, auth.password.get_secret_value(), ctx, auth.timeout,
            dialer,
        )
        signer = make_signer(auth.signer, detached_default=True)  # MOEX: detached
        return MoexPassportFlow(auth, endpoint, passport, signer)
    raise TypeError(f"no flow for auth type {type(auth).__name__}")


def token_header(upstream: Upstream) -> tuple[str, str]:
    """The header the token goes in and what precedes it there."""
    auth = upstream.auth
    if isinstance(auth, JsonLoginAuth):
        return auth.token_header, auth.token_prefix
    return "Authorization", "Bearer "


def rejection_policy(upstream: Upstream) -> RejectionPolicy:
    """How this upstream's API says a token is dead (its gateway's dialect)."""
    if isinstance(upstream.auth, Wso2PasswordAuth):
        from sidecar.auth.wso2 import Wso2GatewayFaults

        return Wso2GatewayFaults()
    return AnyUnauthorized()
