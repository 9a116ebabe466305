"""The sidecar as operators run it: ``sidecar run`` as a child process, its JSON log collected."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import yaml


class SidecarProcess:
    """`sidecar run` as a child process, its JSON log lines collected."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.config_file = workdir / "sidecar.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.proxy = self.admin = ""

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", "run", "--config", str(self.config_file),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        )
        self._reader = asyncio.create_task(self._read())
        started = await self.wait_for("started")
        self.proxy, self.admin = started["proxy"], started["admin"]

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            text = raw.decode(errors="replace")
            self.raw.append(text)
            try:
                self.lines.append(json.loads(text))
            except ValueError:
                pass

    async def wait_for(self, event: str, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if line.get("event") == event:
                    return line
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {event!r} in:\n{''.join(self.raw)}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return code

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
