"""Auth flows (one module per IdP dialect) and the token manager that drives them."""

from __future__ import annotations

from sidecar.auth.base import AuthError, NoToken, Token, TokenSource
from sidecar.auth.factory import rejection_policy, token_header, token_source

__all__ = ["AuthError", "NoToken", "Token", "TokenSource", "rejection_policy", "token_header",
           "token_source"]
