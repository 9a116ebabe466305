"""What the token manager and the rate limiter ask of a store, and the memory store (one
replica: nothing shared, nothing changes).

A :class:`Coordinator` belongs to one token manager. Around each login or refresh the manager
takes a :class:`Turn`: adopt a token another replica obtained, wait (``busy``), or lead (hold
the lease, use the shared refresh token, publish the outcome with ``finish``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sidecar.config.auth import (
    MoexPassportAuth,
    MptSigninAuth,
    OidcPasswordAuth,
    StaticAuth,
    TokenEndpointAuth,
    Wso2PasswordAuth,
)
from sidecar.config.models import Upstream


@dataclass(frozen=True, repr=False)
class SharedToken:
    """One credential's token state as replicas share it; times are Unix (wall clock), as
    replicas on different hosts share no monotonic clock. ``repr`` hides the secrets."""

    access_token: str | None
    expires_at: float  # 0: none (dropped after a rejection)
    lifetime: float
    renew_at: float
    refresh_token: str | None = None
    refresh_deadline: float | None = None

    def __repr__(self) -> str:
        return f"SharedToken(expires_at={self.expires_at:.1f}, renew_at={self.renew_at:.1f})"


class Turn:
    """One attempt's share of the work. The memory store's turn: lead alone, publish nothing."""

    adopt: SharedToken | None = None  # another replica's token: take it, call nobody
    busy: bool = False  # another replica is at it and did not finish within token_wait
    # (refresh token, Unix deadline) to use instead of the local ones; None: keep local
    refresh: tuple[str | None, float | None] | None = None

    async def finish(self, view: SharedToken | None) -> None:
        """The attempt is over: share its outcome (the manager's state now) and let go."""


class Coordinator(Protocol):
    async def begin(self) -> Turn: ...

    def attach(
        self,
        adopt: Callable[[SharedToken], None],
        view: Callable[[], SharedToken | None],
    ) -> None:
        """``adopt`` is called with a token another replica published; ``view`` gives the
        manager's current state (to republish after the store comes back)."""
        ...

    def rejected(self, access_token: str) -> None:
        """The upstream refused this token: drop it from the store if it is still current."""
        ...

    def close(self) -> None: ...


class LocalCoordinator:
    """No store: every replica on its own, as a single sidecar always was."""

    async def begin(self) -> Turn:
        return _LOCAL_TURN

    def attach(
        self,
        adopt: Callable[[SharedToken], None],
        view: Callable[[], SharedToken | None],
    ) -> None:
        pass

    def rejected(self, access_token: str) -> None:
        pass

    def close(self) -> None:
        pass


_LOCAL_TURN = Turn()


class SharedLimit(Protocol):
    """Send slots of one account shared by replicas (see ``sidecar.store.slots``)."""

    @property
    def available(self) -> bool: ...

    async def reserve(self, max_wait: float) -> tuple[bool, float]:
        """(True, seconds until this request's slot), or (False, the wait) when that is past
        ``max_wait`` (nothing reserved). Raises ``StoreDown`` when the store cannot answer."""
        ...

    def pause(self, seconds: float) -> None: ...

    def close(self) -> None: ...


class StoreDown(Exception):
    """The store did not answer in time: the caller goes on alone."""


class Store(Protocol):
    def coordinator(self, upstream: Upstream) -> Coordinator: ...

    def shared_limit(
        self, upstream: Upstream, interval: float, burst: int, on_pause: Callable[[float], None]
    ) -> SharedLimit | None: ...

    def status(self) -> dict[str, object] | None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class MemoryStore:
    def coordinator(self, upstream: Upstream) -> Coordinator:
        return LocalCoordinator()

    def shared_limit(
        self, upstream: Upstream, interval: float, burst: int, on_pause: Callable[[float], None]
    ) -> SharedLimit | None:
        return None

    def status(self) -> dict[str, object] | None:
        return None

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


def _digest(parts: dict[str, object]) -> str:
    text = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def credential_id(upstream: Upstream) -> str | None:
    """A hash of what identifies a credential at its IdP (never the readable user name):
    upstreams and replicas with the same one share one token. None: nothing to share."""
    auth = upstream.auth
    if isinstance(auth, StaticAuth):
        return None
    parts: dict[str, object] = {"type": auth.type}
    if isinstance(auth, TokenEndpointAuth):
        parts |= {"token_url": auth.token_url, "client": auth.client_id, "scope": auth.scope}
    if isinstance(auth, Wso2PasswordAuth):
        parts |= {"client": auth.consumer_key, "user": auth.username}
    if isinstance(auth, OidcPasswordAuth | MoexPassportAuth):
        parts["user"] = auth.username
    if isinstance(auth, MoexPassportAuth):
        parts["passport_url"] = auth.passport_url
    if isinstance(auth, MptSigninAuth):
        # The signing certificate is who logs in; the base URL and extra fields (INN) say
        # where and as whom.
        parts |= {"base_url": auth.base_url, "fields": auth.extra_fields,
                  "signer": auth.signer.model_dump(mode="json", exclude={"ncanode"})}
    return _digest(parts)


def limit_id(upstream: Upstream) -> str:
    """One account's rate limit at one target: the target and the credential."""
    return _digest({"target": upstream.target, "credential": credential_id(upstream)})


def token_hash(access_token: str | None) -> str:
    """How the store names a token in clear: a hash, never the token."""
    return hashlib.sha256(access_token.encode()).hexdigest()[:32] if access_token else ""
