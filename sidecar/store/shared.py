"""The Redis store as the upstreams use it: a shared token per credential
(:mod:`.coordinator`) and shared send slots per rate limit (:mod:`.slots`), both on the
connection, sealing and events of :class:`~sidecar.store.redis_store.RedisStore`."""

from __future__ import annotations

from collections.abc import Callable

from sidecar.config.models import Upstream
from sidecar.store.base import (
    Coordinator,
    LocalCoordinator,
    SharedLimit,
    credential_id,
    limit_id,
)
from sidecar.store.coordinator import RedisCoordinator
from sidecar.store.redis_store import RedisStore
from sidecar.store.slots import SharedSlots


class SharedRedisStore(RedisStore):
    # -- what upstreams ask for --------------------------------------------------------------

    def coordinator(self, upstream: Upstream) -> Coordinator:
        cid = credential_id(upstream)
        if cid is None:
            return LocalCoordinator()
        return RedisCoordinator(self, cid, upstream.timeouts.token_wait)

    def shared_limit(
        self, upstream: Upstream, interval: float, burst: int, on_pause: Callable[[float], None]
    ) -> SharedLimit | None:
        return SharedSlots(self, limit_id(upstream), interval, burst, on_pause)
