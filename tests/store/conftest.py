"""A real redis-server (Debian's) on an ephemeral port in a temp dir, and the store config
that points sidecars at it."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class RedisTls:
    """The server side of ``rediss://``: its certificate, and the CA its clients must show."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    client_cert_file: Path  # for the test's own client
    client_key_file: Path


class RedisServer:
    """``redis-server`` as a child process; ``kill`` and ``start`` again keep the port.
    With ``tls`` it speaks TLS only and requires a client certificate of the CA."""

    def __init__(self, directory: Path, tls: RedisTls | None = None) -> None:
        self.directory = directory
        self.port = _free_port()
        self.tls = tls
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def _listen(self) -> list[str]:
        if self.tls is None:
            return ["--port", str(self.port)]
        return ["--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(self.tls.cert_file),
                "--tls-key-file", str(self.tls.key_file),
                "--tls-ca-cert-file", str(self.tls.ca_file), "--tls-auth-clients", "yes"]

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is missing: `make system-deps` installs it (Debian "
                        "package redis-server)")
        self.proc = await asyncio.create_subprocess_exec(
            binary, *self._listen(), "--bind", "127.0.0.1", "--dir",
            str(self.directory), "--save", "", "--appendonly", "no",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        client = self.client()
        try:
            for _ in range(200):
                try:
                    await client.ping()
                    return
                except (OSError, aioredis.ConnectionError):
                    await asyncio.sleep(0.02)
            raise AssertionError("redis-server did not answer")
        finally:
            await client.aclose()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def client(self) -> aioredis.Redis:
        if self.tls is None:
            return aioredis.Redis(host="127.0.0.1", port=self.port)
        return aioredis.Redis(
            host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=str(self.tls.ca_file),
            ssl_certfile=str(self.tls.client_cert_file),
            ssl_keyfile=str(self.tls.client_key_file),
        )

    async def dump(self) -> dict[bytes, Any]:
        """Every key and its value (strings and hashes), for the scan test."""
        client = self.client()
        out: dict[bytes, Any] = {}
        try:
            async for key in client.scan_iter():
                kind = (await client.type(key)).decode()
                out[key] = await client.hgetall(key) if kind == "hash" else await client.get(key)
        finally:
            await client.aclose()
        return out


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory)
    await server.start()
    try:
        yield server
    finally:
        await server.kill()


def write_key(path: Path) -> Path:
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    return path


@pytest.fixture
def store_config(redis_server: RedisServer, tmp_path: Path) -> dict[str, Any]:
    return {
        "type": "redis",
        "url": redis_server.url,
        "encryption_key_file": str(write_key(tmp_path / "store-key")),
        # Production keeps the 0.2 s default. Here several sidecars, the IdP emulators and
        # hundreds of clients share ONE event loop on a 2-core machine, so a Redis answer can
        # wait that long behind the loop itself; a timeout would then (correctly) fall back
        # to a local login and break the tests' exact login counts by chance.
        "timeout": 1.0,
    }

