"""What the proxy listener calls for a CONNECT to a matched host when interception is on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from sidecar.config.interception import Interception
from sidecar.http1.request import Handler, ServerRequest
from sidecar.interception.serve import serve_tunnel
from sidecar.metrics import Metrics

if TYPE_CHECKING:
    from sidecar.interception.leaves import LeafCache

log = structlog.get_logger("sidecar.proxy")

TRUST_FIX = (
    "the app does not trust the sidecar's CA: add the output of `sidecar ca export` to its "
    "trust store (see the README, 'Apps that call https://')"
)


class Interceptor:
    def __init__(self, leaves: LeafCache, metrics: Metrics, timeout: float = 10.0) -> None:
        self.leaves = leaves
        self._metrics = metrics
        self._timeout = timeout

    async def serve(
        self, request: ServerRequest, upstream: str, host: str,
        handler_for: Callable[[bool], Handler],
    ) -> None:
        def failed(reason: str) -> None:
            log.warning(
                "interception_handshake_failed", host=host, upstream=upstream, reason=reason,
                fix=TRUST_FIX,
            )
            self._metrics.interception_handshake_failures.labels(upstream).inc()

        outcome = await serve_tunnel(
            request, handler_for, lambda: self.leaves.context_for(host), failed, self._timeout
        )
        self._metrics.interceptions.labels(upstream, outcome).inc()


def build_interceptor(config: Interception | None, metrics: Metrics) -> Interceptor | None:
    """The interceptor of a config (None when interception is off); the CA is read, or
    generated into ``state_dir``, here: at start, so a problem stops the start."""
    if config is None:
        return None
    # The CA and the leaves need cryptography (about 10 MiB): loaded only when configured.
    from sidecar.interception.ca import check_writable, load_or_create_ca
    from sidecar.interception.leaves import LeafCache

    if config.ca_cert_file is None:
        check_writable(Path(config.state_dir))
    ca = load_or_create_ca(config.ca_cert_file, config.ca_key_file, Path(config.state_dir))
    return Interceptor(LeafCache(ca), metrics)
