"""One token manager's link to the shared record of its credential in Redis.

Keys (``{prefix}:{credential hash}``): the record (a hash: the sealed state, the token's hash,
expiry and renewal times in ms, the fencing version), ``:lease`` (who logs in now) and
``:fence`` (the counter that numbers leases); the channel ``{prefix}:ev:tok:{hash}`` announces
every new record.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import structlog

from sidecar.store.base import SharedToken, StoreDown, Turn, token_hash
from sidecar.store.redis_store import RedisStore

log = structlog.get_logger("sidecar.store")

LEASE = 3.0  # seconds; renewed every LEASE/3 while the login runs
RECORD_TTL_EXTRA = 24 * 3600.0  # a record outlives its access token (the refresh token lives)
ADOPT_MARGIN = 1.0  # seconds: a record about to expire is not adopted


def _ms(unix: float) -> int:
    return int(unix * 1000)


class RedisCoordinator:
    def __init__(self, store: RedisStore, cid: str, token_wait: float) -> None:
        self._store = store
        self._cid = cid
        self._token_wait = token_wait
        self._owner = os.urandom(8).hex()
        self._record = store.key(cid)
        self._lease = store.key(cid, "lease")
        self._fence = store.key(cid, "fence")
        self._channel = store.channel("tok", cid)
        self._rejected = ""
        self._published = asyncio.Event()
        self._adopt: Callable[[SharedToken], None] | None = None
        self._view: Callable[[], SharedToken | None] | None = None
        self._leading = False
        self._resyncing = False
        store.subscribe(self._channel, self._on_message)
        store.on_reconnect(self._resync)

    def attach(
        self,
        adopt: Callable[[SharedToken], None],
        view: Callable[[], SharedToken | None],
    ) -> None:
        self._adopt, self._view = adopt, view

    def rejected(self, access_token: str) -> None:
        self._rejected = token_hash(access_token)

    def close(self) -> None:
        self._store.unsubscribe(self._channel, self._on_message)
        self._store.forget(self._resync)

    # -- an attempt --------------------------------------------------------------------------

    async def begin(self) -> Turn:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._token_wait
        force = False
        while True:
            self._published.clear()
            try:
                answer = await self._store.run(
                    "BEGIN", [self._record, self._lease, self._fence],
                    [self._owner, _ms(LEASE), self._rejected, _ms(ADOPT_MARGIN),
                     "1" if force else ""],
                )
            except StoreDown:
                return Turn()  # alone, as without a store
            self._rejected = ""
            kind = answer[0].decode()
            if kind == "adopt":
                shared = self._open(answer[1])
                if shared is not None:
                    return _Adopt(shared)
                force = True  # sealed with a key we do not have: log in and reseal
                continue
            if kind == "lead":
                fence = int(answer[2])
                shared = self._open(answer[1]) if answer[1] else None
                return _Lead(self, fence, shared)
            left = deadline - loop.time()
            if left <= 0:
                return _Busy()
            # Another replica holds the lease: sleep until it publishes, its lease ends, or
            # our token_wait is over. No polling: the channel wakes us.
            wait = min(left, max(int(answer[1]), 10) / 1000 + 0.01)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._published.wait(), wait)

    async def _finish(self, fence: int, view: SharedToken | None, before: SharedToken | None,
                      ) -> None:
        blob, th, exp, renew, ttl = "", "", 0, 0, 0
        if view is not None and not _same(view, before):
            blob, th, exp, renew, ttl = self._seal(view)
        try:
            await self._store.run("FINISH", [self._record, self._lease, self._channel], [
                f"{self._owner}:{fence}", fence, blob, th, exp, renew, ttl,
            ])
        except StoreDown:
            pass  # our token stays local; the resync offers it when the store is back

    def _seal(self, view: SharedToken) -> tuple[str, str, int, int, int]:
        record = {
            "a": view.access_token, "e": view.expires_at, "l": view.lifetime,
            "n": view.renew_at, "r": view.refresh_token, "rd": view.refresh_deadline,
        }
        blob = self._store.sealer.seal(record, self._cid)
        ttl = max(view.expires_at, view.refresh_deadline or 0.0) - time.time()
        ttl_ms = _ms(max(ttl, 0.0) + RECORD_TTL_EXTRA)
        return blob, token_hash(view.access_token), _ms(view.expires_at), _ms(view.renew_at), \
            ttl_ms

    def _open(self, blob: bytes | str) -> SharedToken | None:
        record = self._store.sealer.open(blob, self._cid)
        if record is None:
            log.warning("store_record_unreadable",
                        fix="give every replica the same encryption_key_file (and the old "
                            "one in previous_key_files while rotating)")
            return None
        try:
            return SharedToken(
                access_token=record["a"], expires_at=float(record["e"]),
                lifetime=float(record["l"]), renew_at=float(record["n"]),
                refresh_token=record.get("r"), refresh_deadline=record.get("rd"),
            )
        except (KeyError, TypeError, ValueError):
            return None

    async def keep(self, fence: int) -> None:
        """While the login runs: renew the lease (a holder that dies loses it at expiry)."""
        while True:
            await asyncio.sleep(LEASE / 3)
            try:
                kept = await self._store.run("KEEP", [self._lease],
                                             [f"{self._owner}:{fence}", _ms(LEASE)])
            except StoreDown:
                return
            if not kept:
                log.warning("store_lease_lost")
                return

    # -- what other replicas did ---------------------------------------------------------------

    def _on_message(self, data: bytes) -> None:
        self._published.set()
        if self._adopt is not None and not self._leading:
            self._store.later(self._fetch())

    async def _fetch(self) -> None:
        try:
            fields: Any = await self._store.call(
                "FETCH", lambda: self._store.client.hmget(self._record, "blob", "th")
            )
        except StoreDown:
            return
        blob, th = fields
        if not blob or not th:
            return
        current = self._view() if self._view is not None else None
        if current is not None and token_hash(current.access_token) == th.decode():
            return
        shared = self._open(blob)
        if shared is None or self._adopt is None:
            return
        newer_here = (
            current is not None and bool(current.access_token)
            and current.expires_at > shared.expires_at + 0.001
        )
        if newer_here and self._resyncing:
            return  # after an outage the newer token wins: ours is offered instead
        self._adopt(shared)

    async def _resync(self) -> None:
        """The store is back: adopt the shared token, or share ours if it is newer."""
        self._resyncing = True
        try:
            await self._fetch()
        finally:
            self._resyncing = False
        view = self._view() if self._view is not None else None
        if view is None or not view.access_token or view.expires_at - time.time() < ADOPT_MARGIN:
            return
        blob, th, exp, renew, ttl = self._seal(view)
        with contextlib.suppress(StoreDown):
            await self._store.run(
                "OFFER", [self._record, self._lease, self._fence, self._channel],
                [blob, th, exp, renew, ttl],
            )


def _same(a: SharedToken | None, b: SharedToken | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.access_token, a.refresh_token) == (b.access_token, b.refresh_token)


class _Adopt(Turn):
    def __init__(self, shared: SharedToken) -> None:
        self.adopt = shared


class _Busy(Turn):
    busy = True


class _Lead(Turn):
    """We hold the lease: refresh with the shared refresh token (when there is a record),
    publish the outcome, let go."""

    def __init__(self, owner: RedisCoordinator, fence: int, shared: SharedToken | None) -> None:
        self._owner = owner
        self._fence = fence
        self._before = shared
        if shared is not None:
            self.refresh = (shared.refresh_token, shared.refresh_deadline)
        owner._leading = True
        self._keeper = asyncio.get_running_loop().create_task(owner.keep(fence))

    async def finish(self, view: SharedToken | None) -> None:
        self._keeper.cancel()
        await asyncio.wait({self._keeper})  # never swallows a cancellation of our own
        self._owner._leading = False
        await self._owner._finish(self._fence, view, self._before)
