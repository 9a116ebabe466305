"""Prometheus metrics, one registry per sidecar instance.

Label values come only from config (upstream names), HTTP methods from a fixed list, status
codes and fixed reason words: nothing the app makes up (paths, hosts) becomes a label.
"""

from __future__ import annotations

import math
import weakref
from bisect import bisect_left
from collections.abc import Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from sidecar import __version__
from sidecar.inflight import InFlight

# No `*_created` series: one more series per counter and histogram child, which neither the
# dashboard nor the alerts read (process-wide; this process is the sidecar).
disable_created_metrics()

NO_UPSTREAM = "none"  # label for refusals that happen before an upstream is known
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT"})
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
)
_IDP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def method_label(method: str) -> str:
    return method if method in _METHODS else "other"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._upstreams: dict[str, UpstreamMetrics] = {}
        r = self.registry
        # Counted per request: plain numbers turned into families at scrape time.
        self.request_stats = RequestStats()
        r.register(self.request_stats)
        self.inflight = Gauge(
            "sidecar_upstream_inflight", "Requests in progress per upstream.", ["upstream"],
            registry=r,
        )
        self.token_fetch = Counter(
            "sidecar_token_fetch", "Calls to the identity provider, by grant and result.",
            ["upstream", "grant", "result"], registry=r,
        )
        self.token_fetch_duration = Histogram(
            "sidecar_token_fetch_duration_seconds", "Duration of identity provider calls.",
            ["upstream", "grant"], buckets=_IDP_BUCKETS, registry=r,
        )
        self.token_expiry = Gauge(
            "sidecar_token_expiry_timestamp_seconds",
            "Unix time the current token expires (0: none).", ["upstream"], registry=r,
        )
        self.refresh_failures = Gauge(
            "sidecar_token_refresh_consecutive_failures",
            "Failed token attempts since the last success.", ["upstream"], registry=r,
        )
        self.replays = Counter(
            "sidecar_auth_replays", "Requests replayed with a new token after a rejection.",
            ["upstream"], registry=r,
        )
        self.token_rejected_again = Counter(
            "sidecar_auth_token_rejected_again",
            "401s passed to the app without a new login: the token was itself fetched "
            "because of a 401 less than replay.min_interval ago.", ["upstream"], registry=r,
        )
        self.replay_budget_exceeded = Counter(
            "sidecar_replay_budget_exceeded",
            "Requests forwarded without a replay copy because the replay budget was spent.",
            ["upstream"], registry=r,
        )
        self.replay_kept_bytes = Gauge(
            "sidecar_replay_kept_bytes", "Request body bytes kept for replays, all requests.",
            registry=r,
        )
        self.connections_shed = Counter(
            "sidecar_connections_shed",
            "Connections closed because a listener was at max_connections, by listener.",
            ["listener"], registry=r,
        )
        self.interceptions = Counter(
            "sidecar_interceptions",
            "CONNECT tunnels to a matched host served by interception, by upstream and "
            "outcome (tls, plain, handshake_failed, no_data, early_tls).",
            ["upstream", "outcome"], registry=r,
        )
        self.interception_handshake_failures = Counter(
            "sidecar_interception_handshake_failures",
            "Intercepted TLS handshakes that failed: mostly an app that does not trust the "
            "sidecar's CA.", ["upstream"], registry=r,
        )
        self.rate_limit_wait = Histogram(
            "sidecar_rate_limit_wait_seconds", "Time requests waited in the rate limiter.",
            ["upstream"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.local_rejections = Counter(
            "sidecar_local_rejections", "Requests the sidecar answered itself, by reason.",
            ["upstream", "reason"], registry=r,
        )
        self.breaker_open = Gauge(
            "sidecar_upstream_breaker_open",
            "1 while the upstream's circuit breaker refuses requests (open or half-open).",
            ["upstream"], registry=r,
        )
        self.client_cert_expiry = Gauge(
            "sidecar_client_cert_expiry_timestamp_seconds",
            "Unix time the upstream's client certificate expires.", ["upstream"], registry=r,
        )
        self.config_reloads = Counter(
            "sidecar_config_reloads", "Configuration reloads by result.", ["result"], registry=r,
        )
        self.build_info = Gauge(
            "sidecar_build_info", "Always 1; the version is a label.", ["version"], registry=r,
        )
        self.build_info.labels(__version__).set(1)

    def refused_early(self, method: str, status: int, reason: str) -> None:
        """A request the sidecar refused before routing it (unknown host, CONNECT refused, a
        malformed head): counted in the request series too, under ``upstream="none"``."""
        _count(self.request_stats.add(NO_UPSTREAM), method, status, 0.0, 0, 0)
        self.local_rejections.labels(NO_UPSTREAM, reason).inc()

    def store_events(self) -> StoreMetrics:
        """The shared store's metrics, registered only when a store other than memory runs
        (a memory store has no health to report)."""
        return StoreMetrics(self.registry)

    def for_upstream(self, name: str) -> UpstreamMetrics:
        # One per name for the process's life: a reloaded upstream keeps counting in-flight
        # requests of the runtime it replaced until they finish.
        found = self._upstreams.get(name)
        if found is None:
            found = self._upstreams[name] = UpstreamMetrics(self, name)
        return found


class UpstreamMetrics:
    """The metrics of one upstream, with its label children bound once (cheap on the hot path)."""

    def __init__(self, metrics: Metrics, name: str) -> None:
        self.name = name
        self._m = metrics
        self._counts = metrics.request_stats.add(name)
        # The runtimes' own in-flight counts (a reload's old one until it drains), summed
        # by the gauge at scrape time: nothing extra is counted on the hot path.
        self._inflight: weakref.WeakSet[InFlight] = weakref.WeakSet()
        metrics.inflight.labels(name).set_function(
            lambda: sum(i.count for i in self._inflight)
        )
        # Likewise the breakers (a reload's new one, an old one still draining): 1 when any
        # refuses requests. Read at scrape time only.
        self._breakers: weakref.WeakSet[_Breaker] = weakref.WeakSet()
        metrics.breaker_open.labels(name).set_function(
            lambda: max((b.refusing for b in self._breakers), default=0.0)
        )
        self.replays = metrics.replays.labels(name)
        self.token_rejected_again = metrics.token_rejected_again.labels(name)
        self.replay_budget_exceeded = metrics.replay_budget_exceeded.labels(name)
        self.rate_limit_wait = metrics.rate_limit_wait.labels(name)
        # The expiry series appears with the token manager's first report (a token or a failed
        # attempt): an eager upstream has it from start-up, a lazy one only once it is used, so
        # "no token" alerts never fire for a lazy upstream nobody called.
        self.refresh_failures = metrics.refresh_failures.labels(name)
        self.refresh_failures.set(0)

    def track_inflight(self, inflight: InFlight) -> None:
        """Count this upstream runtime's requests in progress in the gauge."""
        self._inflight.add(inflight)

    def track_breaker(self, breaker: _Breaker) -> None:
        self._breakers.add(breaker)

    def request_done(
        self, method: str, status: int, seconds: float, bytes_in: int, bytes_out: int
    ) -> None:
        _count(self._counts, method, status, seconds, bytes_in, bytes_out)

    def client_cert_expiry(self, not_after_unix: float) -> None:
        # Only upstreams with a client certificate get the series: a 0 would read as
        # "expired" and page someone forever.
        self._m.client_cert_expiry.labels(self.name).set(not_after_unix)

    def rejected(self, reason: str) -> None:
        self._m.local_rejections.labels(self.name, reason).inc()

    # -- token manager events (auth.base.TokenEvents) -------------------------------------

    def token_fetched(self, grant: str, ok: bool, seconds: float) -> None:
        self._m.token_fetch.labels(self.name, grant, "success" if ok else "failure").inc()
        self._m.token_fetch_duration.labels(self.name, grant).observe(seconds)

    def token_state(self, expires_at_unix: float, consecutive_failures: int) -> None:
        self._m.token_expiry.labels(self.name).set(expires_at_unix)
        self.refresh_failures.set(consecutive_failures)


class StoreMetrics:
    """The shared store's health (``sidecar.store.redis_store.StoreEvents``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.up = Gauge(
            "sidecar_store_up",
            "1 while the shared store answers; 0: this replica works alone.", registry=registry,
        )
        self.errors = Counter(
            "sidecar_store_errors", "Calls to the shared store that failed or timed out, by op.",
            ["op"], registry=registry,
        )

    def store_up(self, up: bool) -> None:
        self.up.set(1 if up else 0)

    def store_error(self, op: str) -> None:
        self.errors.labels(op).inc()


class _Breaker(Protocol):
    @property
    def refusing(self) -> float: ...


class _Counts:
    __slots__ = ("buckets", "by_code", "bytes_in", "bytes_out", "seconds")

    def __init__(self) -> None:
        self.by_code: dict[tuple[str, int], int] = {}  # (method label, status) -> requests
        self.buckets = [0] * (len(_LATENCY_BUCKETS) + 1)  # per bucket, not cumulative
        self.seconds = 0.0
        self.bytes_in = 0
        self.bytes_out = 0


def _count(
    c: _Counts, method: str, status: int, seconds: float, bytes_in: int, bytes_out: int
) -> None:
    key = (method_label(method), status)
    c.by_code[key] = c.by_code.get(key, 0) + 1
    c.buckets[bisect_left(_LATENCY_BUCKETS, seconds)] += 1
    c.seconds += seconds
    c.bytes_in += bytes_in
    c.bytes_out += bytes_out


class RequestStats(Collector):
    """The per-request series (requests, duration, body bytes) as plain numbers: the hot
    path adds to them without prometheus_client's locks (the event loop is one thread,
    and scrapes are served on it too), and ``collect`` builds the families on a scrape."""

    def __init__(self) -> None:
        self._upstreams: dict[str, _Counts] = {}

    def add(self, name: str) -> _Counts:
        return self._upstreams.setdefault(name, _Counts())

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "sidecar_requests", "Proxied requests by answer status (the sidecar's own included).",
            labels=["upstream", "method", "code"],
        )
        duration = HistogramMetricFamily(
            "sidecar_request_duration_seconds", "Time from request to the last response byte.",
            labels=["upstream"],
        )
        sent = CounterMetricFamily(
            "sidecar_request_body_bytes", "Request body bytes sent upstream.", labels=["upstream"]
        )
        returned = CounterMetricFamily(
            "sidecar_response_body_bytes", "Response body bytes sent to the app.",
            labels=["upstream"],
        )
        for name, c in self._upstreams.items():
            for (method, code), n in c.by_code.items():
                requests.add_metric([name, method, str(code)], n)
            cumulative, buckets = 0, []
            for bound, n in zip((*_LATENCY_BUCKETS, math.inf), c.buckets, strict=True):
                cumulative += n
                buckets.append((floatToGoString(bound), cumulative))
            duration.add_metric([name], buckets, sum_value=c.seconds)
            sent.add_metric([name], c.bytes_in)
            returned.add_metric([name], c.bytes_out)
        yield from (requests, duration, sent, returned)
