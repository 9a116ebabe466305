"""``oidc_password``: the OAuth2 password grant against Keycloak (MOEX NTB, PROTOCOLS §1, §3)."""

from __future__ import annotations

from sidecar.auth.base import Grant
from sidecar.auth.oauth import OAuthFlow, TokenEndpoint
from sidecar.config.models import OidcPasswordAuth


class PasswordFlow(OAuthFlow):
    grant_type = "password"

    def __init__(self, cfg: OidcPasswordAuth, endpoint: TokenEndpoint) -> None:
        secret = cfg.client_secret.get_secret_value() if cfg.client_secret else None
        super().__init__(endpoint, cfg.client_id, secret, cfg.scope)
        self._username = cfg.username
        self._password = cfg.password

    async def login(self) -> Grant:
        form = {
            "grant_type": "password",
            "username": self._username,
            "password": self._password.get_secret_value(),
        }
        if self.scope:
            form["scope"] = self.scope
        return await self._post(form)
