"""``static``: a fixed bearer token, from config or from a file re-read when it changes.

Kubernetes updates a Secret volume by swapping a symlink, so the file is identified by
``stat()`` (which follows the link): inode, size and mtime.
"""

from __future__ import annotations

import math
import ssl
import time
from pathlib import Path

import structlog

from sidecar import logs
from sidecar.auth.base import NoToken, Token, TokenEvents, token_problem
from sidecar.config.auth import StaticAuth
from sidecar.config.errors import SetupError

log = structlog.get_logger("sidecar.auth")

RECHECK_INTERVAL = 1.0  # seconds between stat() calls on the request path


class StaticToken:
    def __init__(
        self, upstream: str, cfg: StaticAuth, events: TokenEvents | None = None
    ) -> None:
        self.upstream = upstream
        self._events = events
        self._path: Path | None = cfg.token_file
        self._token: Token | None = None
        if cfg.token is not None:
            value = cfg.token.get_secret_value()
            problem = token_problem(value)
            if problem is not None:
                raise SetupError(f"upstream {upstream}: auth.token cannot be sent: {problem}")
            self._token = Token(value, math.inf, margin=0.0)
        self._identity: tuple[int, int, int] | None = None
        self._checked_at = -math.inf
        self._error: str | None = None

    async def start(self) -> None:
        self._reload_if_changed()
        self._report()

    def _report(self) -> None:
        if self._events is not None:
            self._events.token_state(math.inf if self._token else 0.0, 0 if self._token else 1)

    def peek(self) -> Token | None:
        now = time.monotonic()
        if self._path is not None and now - self._checked_at >= RECHECK_INTERVAL:
            self._checked_at = now
            self._reload_if_changed()
        return self._token

    async def get(self) -> Token:
        token = self.peek()
        if token is None:
            raise NoToken(self._error or "static token is not loaded", retry_after=1.0)
        return token

    def invalidate(self, token: Token) -> None:
        self._checked_at = -math.inf  # the upstream refused it: look at the file again now

    def _reload_if_changed(self) -> None:
        if self._path is None:
            return
        try:
            st = self._path.stat()
            identity = (st.st_ino, st.st_size, st.st_mtime_ns)
            if identity == self._identity:
                return
            raw = self._path.read_bytes()
        except OSError as exc:
            self._error = f"token_file {self._path}: {exc.strerror}"
            log.warning("static_token_unreadable", upstream=self.upstream, reason=self._error)
            return
        try:
            value = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            problem: str | None = "is not UTF-8"
        else:
            problem = "is empty" if not value else None
            if value and (why := token_problem(value)) is not None:
                problem = f"holds no usable access token: {why}"
        if problem is not None:
            # What the file says now is not a token: stop sending the old one, as for an
            # empty file (a rotated Secret may have revoked it), and say why on each request.
            self._error = f"token_file {self._path} {problem}"
            self._token = None
            self._report()
            log.warning("static_token_unreadable", upstream=self.upstream, reason=self._error)
            return
        self._identity = identity
        self._error = None
        logs.secrets.add(value)
        if self._token is None or self._token.value != value:
            self._token = Token(value, math.inf, margin=0.0)
            log.info("static_token_loaded", upstream=self.upstream)
            self._report()

    def renew_tls(self, ssl_context: ssl.SSLContext) -> None:
        return None  # no IdP to talk to

    @property
    def ready(self) -> bool:
        return self._token is not None

    def status(self) -> dict[str, object]:
        return {
            "state": "valid" if self._token else "none",
            "expires_in": None,
            "last_error": self._error,
            "consecutive_failures": 0 if self._token else 1,
        }

    async def close(self) -> None:
        return None
