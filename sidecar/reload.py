"""Reloading: SIGHUP, or any change to the config file or a file it names.

Kubernetes updates Secret and ConfigMap volumes by swapping a symlink, so files are compared by
what ``stat()`` (which follows links) says: inode, size, modification time. A config that does
not validate, or a certificate that does not load, is rejected with a logged reason and the
running config stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

import structlog

from sidecar.app import Sidecar
from sidecar.config import ConfigError, load_config, referenced_files
from sidecar.errors import SetupError

log = structlog.get_logger("sidecar.reload")

Identity = tuple[int, int, int] | None


def _identity(path: Path) -> Identity:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class Reloader:
    def __init__(
        self,
        sidecar: Sidecar,
        config_path: str | Path,
        *,
        interval: float = 2.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._sidecar = sidecar
        self._path = Path(config_path)
        self._interval = interval
        self._environ = dict(os.environ if environ is None else environ)
        self._lock = asyncio.Lock()
        self._seen: dict[Path, Identity] = {}
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[bool]] = set()

    def start(self) -> None:
        self._remember()
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def trigger(self, reason: str) -> None:
        """Reload in the background (from a signal handler)."""
        task = asyncio.get_running_loop().create_task(self.reload(reason))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def reload(self, reason: str, changed: set[Path] | None = None) -> bool:
        """Load and apply the config; True when applied. Never raises for a bad config."""
        metrics = self._sidecar.metrics.config_reloads
        async with self._lock:
            try:
                config = load_config(self._path, self._environ)
                await self._sidecar.apply(config, changed)
            except (ConfigError, SetupError, OSError) as exc:
                problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
                log.error("config_reload_rejected", reason=reason, problems=problems)
                metrics.labels("failure").inc()
                return False
            finally:
                self._remember()
            metrics.labels("success").inc()
            log.info("config_reloaded", reason=reason)
            return True

    def _files(self) -> set[Path]:
        try:
            return referenced_files(self._path, self._environ)
        except ConfigError:
            return set(self._seen) | {self._path}

    def _remember(self) -> None:
        self._seen = {path: _identity(path) for path in self._files()}

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            changed = {p for p, ident in self._seen.items() if _identity(p) != ident}
            if changed:
                names = sorted(str(p) for p in changed)
                await self.reload(f"files changed: {', '.join(names)}", changed)
