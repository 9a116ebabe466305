"""A per-upstream circuit breaker: an API that stops answering at all (MOEX drops packets
for hours under sustained load rather than answer 429) is not waited on by every request.

After ``failures`` connect failures or timeouts in a row the breaker opens: requests get the
sidecar's 503 ``upstream_unavailable`` at once, with ``Retry-After``. When the cool-down is
over, one request at a time goes through as a probe (half-open): an answer (any status)
closes the breaker; another silence opens it again for twice as long, up to
``max_cool_down``. Only silence counts: an HTTP answer, even a 5xx, shows the API is there,
and a timeout never says anything about the token.

The pipeline reads :attr:`Breaker.clean` on every request; everything else runs only while
something is wrong.
"""

from __future__ import annotations

import time

import structlog

from sidecar.config.models import CircuitBreaker

log = structlog.get_logger("sidecar.proxy")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# The upstream failures (error codes of upstream_client._failure) that mean "no answer"
# (an egress proxy that cannot be reached is as silent as the API itself).
SILENT = frozenset({"upstream_unreachable", "upstream_timeout", "egress_proxy_unreachable"})


class Breaker:
    __slots__ = (
        "__weakref__", "_cfg", "_cool_down", "_opened_until", "_probing", "clean", "failures",
        "name", "state",
    )

    def __init__(self, name: str, cfg: CircuitBreaker | None) -> None:
        self.name = name
        self._cfg = cfg  # None: never opens
        self.state = CLOSED
        self.failures = 0  # counted failures in a row
        # Closed with no failure counted: the one thing the hot path looks at.
        self.clean = True
        self._cool_down = cfg.cool_down if cfg else 0.0  # the next open period
        self._opened_until = 0.0
        self._probing = False

    @property
    def open_for(self) -> float:
        """Seconds until the next probe may go (0 unless open)."""
        if self.state != OPEN:
            return 0.0
        return max(0.0, self._opened_until - time.monotonic())

    def admit(self) -> float | None:
        """None: the request may go (in half-open state, as the probe); else the seconds
        to tell the app to wait."""
        if self.state == CLOSED:
            return None
        if self.state == OPEN:
            left = self._opened_until - time.monotonic()
            if left > 0:
                return left
            self.state = HALF_OPEN
        if self._probing:
            assert self._cfg is not None
            return self._cfg.cool_down  # a probe is out; its answer decides
        self._probing = True
        log.info("breaker_probe", upstream=self.name)
        return None

    def succeeded(self) -> None:
        """The upstream answered (any status)."""
        if self.state != CLOSED:
            log.info("breaker_closed", upstream=self.name, failures=self.failures)
        self.state = CLOSED
        self.failures = 0
        self.clean = True
        self._probing = False
        if self._cfg is not None:
            self._cool_down = self._cfg.cool_down

    def failed(self, probe: bool) -> None:
        """No connection, or no answer in time. ``probe``: this was the half-open probe."""
        cfg = self._cfg
        if cfg is None:
            return
        self.failures += 1
        self.clean = False
        if self.state == CLOSED:
            if self.failures >= cfg.failures:
                self._open(cfg.cool_down)
        elif self.state == HALF_OPEN and probe:
            self._probing = False
            self._open(min(self._cool_down * 2, cfg.max_cool_down))
        # Open, or a request sent before it opened: the cool-down already runs.

    def probe_abandoned(self) -> None:
        """The probe ended without an answer or a silence (the app left, no token, a TLS
        error): the next request probes instead."""
        self._probing = False

    def _open(self, cool_down: float) -> None:
        self._cool_down = cool_down
        self._opened_until = time.monotonic() + cool_down
        self.state = OPEN
        log.warning("breaker_open", upstream=self.name, failures=self.failures,
                    cool_down=cool_down)

    def status(self) -> dict[str, object]:
        return {"state": self.state, "failures": self.failures,
                "open_for": round(self.open_for, 1)}

    @property
    def refusing(self) -> float:
        """1 while requests are refused (open or half-open), for the gauge."""
        return 0.0 if self.state == CLOSED else 1.0
