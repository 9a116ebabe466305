"""The shared store: token state and rate limits of credentials that several replicas share.
``memory`` (the default) shares nothing; ``redis`` shares through Redis or Valkey."""

from __future__ import annotations

from sidecar.config.errors import SetupError
from sidecar.config.store import Store as StoreConfig
from sidecar.metrics import Metrics
from sidecar.store.base import (
    Coordinator,
    LocalCoordinator,
    MemoryStore,
    SharedLimit,
    SharedToken,
    Store,
    StoreDown,
    Turn,
)


def build_store(cfg: StoreConfig, metrics: Metrics) -> Store:
    if cfg.type == "memory":
        return MemoryStore()
    try:
        from sidecar.store.shared import SharedRedisStore
    except ImportError:
        raise SetupError(
            "store.type: redis needs the redis library: pip install 'authsidecar[redis]'"
        ) from None
    return SharedRedisStore(cfg, metrics.store_events())


__all__ = [
    "Coordinator",
    "LocalCoordinator",
    "MemoryStore",
    "SharedLimit",
    "SharedToken",
    "Store",
    "StoreDown",
    "Turn",
    "build_store",
]
