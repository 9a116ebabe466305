"""A small load generator for the tests: N clients looping through the sidecar, checking bodies."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp


@dataclass
class LoadResult:
    statuses: Counter[int] = field(default_factory=Counter)
    body_mismatches: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def non_2xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 300) + len(self.errors)


async def run_load(
    proxy: str,
    url: str,
    *,
    clients: int,
    duration: float,
    body_size: int = 256,
) -> LoadResult:
    """Each client POSTs random bodies for ``duration`` s; the API's sha256 must match."""
    result = LoadResult()
    deadline = time.monotonic() + duration

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < deadline:
            body = os.urandom(body_size)
            try:
                async with session.post(url, data=body, proxy=proxy) as resp:
                    result.statuses[resp.status] += 1
                    if resp.status == 200:
                        seen = await resp.json()
                        if seen["body_sha256"] != hashlib.sha256(body).hexdigest():
                            result.body_mismatches += 1
                    else:
                        await resp.read()
            except aiohttp.ClientError as exc:
                result.errors.append(repr(exc))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return result
