"""Building an upstream's token source from its ``auth`` block."""

from __future__ import annotations

import ssl

from sidecar.auth.base import (
    AnyUnauthorized,
    AuthFlow,
    RejectionPolicy,
    TokenEvents,
    TokenSource,
)
from sidecar.auth.client_credentials import ClientCredentialsFlow
from sidecar.auth.keycloak import PasswordFlow
from sidecar.auth.manager import TokenManager
from sidecar.auth.moex_passport import MoexPassportFlow, PassportClient
from sidecar.auth.mpt import MptSigninFlow
from sidecar.auth.oauth import TokenEndpoint
from sidecar.auth.static import StaticToken
from sidecar.auth.wso2 import Wso2GatewayFaults, Wso2PasswordFlow
from sidecar.config.auth import (
    AuthBase,
    ClientCredentialsAuth,
    MoexPassportAuth,
    MptSigninAuth,
    OidcPasswordAuth,
    StaticAuth,
    TokenEndpointAuth,
    Wso2PasswordAuth,
)
from sidecar.config.models import Upstream
from sidecar.signing import make_signer
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
    flow = auth_flow(auth, upstream_ssl)
    return TokenManager(
        name,
        flow,
        token_wait=upstream.timeouts.token_wait,
        backoff_cap=auth.backoff_cap,
        events=events,
        shared=shared,
    )


def auth_flow(auth: AuthBase, upstream_ssl: ssl.SSLContext) -> AuthFlow:
    # The token call uses the upstream's TLS (client certificate included) unless auth.tls says
    # otherwise: KISC wants the same certificate on both legs.
    ctx = client_context(auth.tls) if auth.tls is not None else upstream_ssl
    if isinstance(auth, MptSigninAuth):
        return MptSigninFlow(auth, ctx, make_signer(auth.signer, detached_default=False))
    assert isinstance(auth, TokenEndpointAuth)
    endpoint = TokenEndpoint(auth.token_url, ctx, auth.timeout)
    if isinstance(auth, OidcPasswordAuth):
        return PasswordFlow(auth, endpoint)
    if isinstance(auth, ClientCredentialsAuth):
        return ClientCredentialsFlow(auth, endpoint)
    if isinstance(auth, Wso2PasswordAuth):
        return Wso2PasswordFlow(auth, endpoint)
    if isinstance(auth, MoexPassportAuth):
        passport = PassportClient(
            auth.passport_url, auth.username, auth.password.get_secret_value(), ctx, auth.timeout
        )
        signer = make_signer(auth.signer, detached_default=True)  # MOEX: detached
        return MoexPassportFlow(auth, endpoint, passport, signer)
    raise TypeError(f"no flow for auth type {type(auth).__name__}")


def rejection_policy(upstream: Upstream) -> RejectionPolicy:
    """How this upstream's API says a token is dead (its gateway's dialect)."""
    if isinstance(upstream.auth, Wso2PasswordAuth):
        return Wso2GatewayFaults()
    return AnyUnauthorized()
