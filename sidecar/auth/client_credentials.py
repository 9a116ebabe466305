"""``client_credentials``: the OAuth2 client credentials grant (RFC 6749 §4.4)."""

from __future__ import annotations

from sidecar.auth.base import Grant
from sidecar.auth.oauth import OAuthFlow, TokenEndpoint
from sidecar.config.auth import ClientCredentialsAuth


class ClientCredentialsFlow(OAuthFlow):
    grant_type = "client_credentials"

    def __init__(self, cfg: ClientCredentialsAuth, endpoint: TokenEndpoint) -> None:
        super().__init__(
            endpoint, cfg.client_id, cfg.client_secret.get_secret_value(), cfg.scope
        )

    async def login(self) -> Grant:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        return await self._post(form)
