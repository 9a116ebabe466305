"""Reloading: SIGHUP, or any change to the config file or a file it names; and what a new
config changes in the running upstreams (:func:`plan_reload`).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog
from prometheus_client import Counter

from sidecar.auth.base import TokenSource
from sidecar.config import (
    Config,
    ConfigError,
    Upstream,
    load_config,
    referenced_files,
    signer_files,
    tls_files,
)
from sidecar.config.errors import SetupError
from sidecar.proxy.ratelimit import RateLimiter
from sidecar.proxy.upstream import UpstreamRuntime

log = structlog.get_logger("sidecar.reload")

Identity = tuple[int, int, int] | None


def _identity(path: Path) -> Identity:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Rebuild:
    """An upstream to build anew, with the live parts it may keep."""

    config: Upstream
    tokens: TokenSource | None = None  # same credentials and TLS: the live token goes on
    limiter: RateLimiter | None = None  # same rate limit: one target never gets two queues


@dataclass
class ReloadPlan:
    rebuild: dict[str, Rebuild] = field(default_factory=dict)
    renew_tls: list[UpstreamRuntime] = field(default_factory=list)  # same config, new files
    removed: list[str] = field(default_factory=list)


def plan_reload(
    running: Mapping[str, UpstreamRuntime], new: Config, changed_files: set[Path] | None
) -> ReloadPlan:
    """What a new config changes. Unchanged upstreams keep their token; a rebuilt one with the
    same credentials and TLS takes the live token over, so one credential never has two
    managers refreshing it (WSO2 refresh tokens are single-use). ``changed_files`` None means
    "unknown" (SIGHUP): TLS files are then assumed to have changed."""
    plan = ReloadPlan(removed=[n for n in running if n not in new.upstreams])
    for name, cfg in new.upstreams.items():
        current = running.get(name)
        signer_rotated = _signer_touched(cfg, changed_files)
        if current is None:
            plan.rebuild[name] = Rebuild(cfg)
        elif current.config != cfg or signer_rotated:
            old = current.config
            same_credentials = (old.auth, old.tls) == (cfg.auth, cfg.tls) and not signer_rotated
            plan.rebuild[name] = Rebuild(
                cfg,
                current.tokens if same_credentials else None,
                current.limiter if old.rate_limit == cfg.rate_limit else None,
            )
        elif _tls_touched(cfg, changed_files):
            plan.renew_tls.append(current)
    return plan


class Reloadable(Protocol):
    """What the reloader drives: the running sidecar."""

    async def apply(self, config: Config, changed_files: set[Path] | None = None) -> None: ...

    @property
    def reload_counter(self) -> Counter: ...


class Reloader:
    def __init__(
        self,
        sidecar: Reloadable,
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
        """Load and apply the config; True when applied. Never raises for a bad config.

        File states are taken *before* loading: a Secret update that lands while the reload
        reads its files then differs from what was recorded and starts another reload,
        instead of being taken as already seen."""
        metrics = self._sidecar.reload_counter
        async with self._lock:
            before = self._states(self._files())
            try:
                config = load_config(self._path, self._environ)
                await self._sidecar.apply(config, changed)
            except (ConfigError, SetupError, OSError) as exc:
                problems = exc.problems if isinstance(exc, ConfigError) else [str(exc)]
                log.error("config_reload_rejected", reason=reason, problems=problems)
                metrics.labels("failure").inc()
                return False
            finally:
                # Files the new config names for the first time are taken as they are now.
                now = self._files()
                self._seen = {p: before[p] if p in before else _identity(p) for p in now}
            metrics.labels("success").inc()
            log.info("config_reloaded", reason=reason)
            return True

    def _files(self) -> set[Path]:
        try:
            return referenced_files(self._path, self._environ)
        except ConfigError:
            return set(self._seen) | {self._path}

    @staticmethod
    def _states(files: set[Path]) -> dict[Path, Identity]:
        return {path: _identity(path) for path in files}

    def _remember(self) -> None:
        self._seen = self._states(self._files())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            changed = {p for p, ident in self._seen.items() if _identity(p) != ident}
            if changed:
                names = sorted(str(p) for p in changed)
                await self.reload(f"files changed: {', '.join(names)}", changed)


def _tls_touched(cfg: Upstream, changed_files: set[Path] | None) -> bool:
    """Whether the upstream's TLS material may have changed (None: unknown, assume so)."""
    return changed_files is None or bool(tls_files(cfg) & changed_files)


def _signer_touched(cfg: Upstream, changed_files: set[Path] | None) -> bool:
    """Whether a signing key or certificate file of the upstream's login changed on disk."""
    # SIGHUP with no file news (None): a changed config is caught by comparison.
    return changed_files is not None and bool(signer_files(cfg) & changed_files)
