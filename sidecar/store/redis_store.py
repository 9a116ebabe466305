"""The Redis store: one connection pool and one pub/sub subscription per process.

Redis trouble never stops traffic: every call is bounded by ``store.timeout``; the first one
that fails marks the store down, and from then on callers go on alone at once (no call waits
on a dead Redis) while a supervisor reconnects with backoff, subscribes again and lets every
coordinator resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sidecar.config.store import Store as StoreConfig
from sidecar.store import scripts
from sidecar.store.base import StoreDown
from sidecar.store.seal import Sealer

log = structlog.get_logger("sidecar.store")

RECONNECT_INITIAL = 0.25
RECONNECT_CAP = 2.0


class StoreEvents(Protocol):
    """Where the store reports its health (metrics: ``sidecar.metrics.StoreMetrics``)."""

    def store_up(self, up: bool) -> None: ...

    def store_error(self, op: str) -> None: ...


def _keep_cancellation() -> None:
    """A connection error raised while our task is being cancelled: the client library may
    have turned the cancellation into that error. Cancelled it stays."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class _Nowhere:
    def store_up(self, up: bool) -> None:
        pass

    def store_error(self, op: str) -> None:
        pass


class RedisStore:
    def __init__(self, cfg: StoreConfig, events: StoreEvents | None = None) -> None:
        assert cfg.url is not None
        self.timeout = cfg.timeout
        self.prefix = cfg.key_prefix
        self.sealer = Sealer(cfg.keys())
        self._events: StoreEvents = events or _Nowhere()
        kwargs: dict[str, Any] = {}
        if cfg.tls is not None:
            kwargs |= {
                "ssl_ca_certs": str(cfg.tls.ca_file) if cfg.tls.ca_file else None,
                "ssl_certfile": str(cfg.tls.cert_file) if cfg.tls.cert_file else None,
                "ssl_keyfile": str(cfg.tls.key_file) if cfg.tls.key_file else None,
                "ssl_cert_reqs": "required" if cfg.tls.verify else "none",
            }
        self.client = aioredis.Redis.from_url(
            cfg.url,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            socket_timeout=cfg.timeout,
            socket_connect_timeout=cfg.timeout,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 0),  # one try: past store.timeout we go on alone
            health_check_interval=0,
            **kwargs,
        )
        self._scripts = {
            name: self.client.register_script(getattr(scripts, name))
            for name in ("BEGIN", "KEEP", "FINISH", "OFFER", "SLOT", "PAUSE")
        }
        self.state = "connecting"
        self._since = time.time()
        self._last_error: str | None = None
        self._wake = asyncio.Event()  # the supervisor: the connection failed
        self._up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # channel -> handlers (token records by credential, pauses by account)
        self._handlers: dict[str, set[Callable[[bytes], None]]] = {}
        self._resyncs: set[Callable[[], Awaitable[None]]] = set()
        self._background: set[asyncio.Task[Any]] = set()

    # -- what upstreams ask for --------------------------------------------------------------

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def channel(self, kind: str, ident: str) -> str:
        return self.key("ev", kind, ident)

    def subscribe(self, channel: str, handler: Callable[[bytes], None]) -> None:
        self._handlers.setdefault(channel, set()).add(handler)

    def unsubscribe(self, channel: str, handler: Callable[[bytes], None]) -> None:
        self._handlers.get(channel, set()).discard(handler)

    def on_reconnect(self, resync: Callable[[], Awaitable[None]]) -> None:
        self._resyncs.add(resync)

    def forget(self, resync: Callable[[], Awaitable[None]]) -> None:
        self._resyncs.discard(resync)

    # -- calls -------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self.state == "up"

    async def run(self, op: str, keys: list[str], args: list[Any]) -> Any:
        """One script, bounded by ``store.timeout``. Raises StoreDown (at once when down)."""
        return await self.call(op, lambda: self._scripts[op](keys=keys, args=args))

    async def call(self, op: str, make: Callable[[], Awaitable[Any]]) -> Any:
        if not self.available:
            raise StoreDown(self._last_error or "store not connected")
        try:
            return await asyncio.wait_for(make(), self.timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            _keep_cancellation()
            self._failed(op.lower(), exc)
            raise StoreDown(self._last_error or "") from None

    def later(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _failed(self, op: str, exc: BaseException) -> None:
        self._events.store_error(op)
        reason = f"{op}: {type(exc).__name__}" + (f": {exc}" if str(exc) else "")
        self._last_error = reason[:200]
        # Also the first failure at start: a replica that never reaches Redis (a wrong URL,
        # a refused client certificate) must say so once, not stay "connecting" silently.
        if self.state != "down":
            log.warning("store_down", reason=self._last_error, fallback="local")
            self.state, self._since = "down", time.time()
            self._up.clear()
            self._events.store_up(False)
        self._wake.set()

    # -- life cycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._supervise(), name="store-supervisor"
            )
            # The first connection within one call's time, so that eager logins share: past
            # it they go on alone and resync when the store comes.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._until_up(), self.timeout * 5)

    async def _until_up(self) -> None:
        await self._up.wait()

    def status(self) -> dict[str, object]:
        return {
            "type": "redis",
            "state": self.state,
            "since": datetime.fromtimestamp(self._since, UTC).isoformat(),
            "last_error": self._last_error,
        }

    async def close(self) -> None:
        task = self._task
        # Cancelled until done: a cancellation that lands as a connection fails can be lost
        # inside the client library (the task then goes on to its backoff).
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
        for task in list(self._background):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.aclose(), 1.0)

    async def _supervise(self) -> None:
        delay = RECONNECT_INITIAL
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await asyncio.wait_for(self.client.ping(), self.timeout)
                await asyncio.wait_for(pubsub.psubscribe(self.channel("*", "*")), self.timeout)
            except (RedisError, OSError, TimeoutError) as exc:
                _keep_cancellation()
                self._failed("connect", exc)
                await self._close_pubsub(pubsub)
                await asyncio.sleep(delay * random.uniform(0.8, 1.0))
                delay = min(delay * 2, RECONNECT_CAP)
                continue
            delay = RECONNECT_INITIAL
            self._wake.clear()
            self.state, self._since = "up", time.time()
            self._up.set()
            self._events.store_up(True)
            log.info("store_up")
            for resync in list(self._resyncs):
                self.later(resync())
            try:
                await self._listen(pubsub)
            except (RedisError, OSError) as exc:
                _keep_cancellation()
                self._failed("subscribe", exc)
            finally:
                await self._close_pubsub(pubsub)

    async def _listen(self, pubsub: Any) -> None:
        while not self._wake.is_set():
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is None or message.get("type") != "pmessage":
                continue
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            for handler in list(self._handlers.get(channel, ())):
                try:
                    handler(message["data"])
                except Exception:
                    log.exception("store_message_error")

    async def _close_pubsub(self, pubsub: Any) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pubsub.aclose(), self.timeout)
