"""``oidc_password``: the OAuth2 password grant against Keycloak (MOEX NTB, docs/protocols.md).

Client credentials go in the form (Keycloak's public clients have no secret)."""

from __future__ import annotations

from sidecar.auth.oauth import PasswordGrant, TokenEndpoint
from sidecar.config.auth import OidcPasswordAuth


class PasswordFlow(PasswordGrant):
    def __init__(self, cfg: OidcPasswordAuth, endpoint: TokenEndpoint) -> None:
        secret = cfg.client_secret.get_secret_value() if cfg.client_secret else None
        super().__init__(endpoint, cfg.client_id, secret, cfg.scope, cfg.username, cfg.password)
