"""Configuration models: one class per YAML block, field names as the README documents them.

Secrets are ``SecretStr``; every secret field ``x`` may be given as ``x_file`` instead
(a Kubernetes Secret mount), which :class:`SecretFiles` resolves before validation. The
blocks live in :mod:`.fields` (value types, bases), :mod:`.sections` (listen, tls, ...) and
:mod:`.auth` (auth flows and signers); this module holds an upstream and the whole file.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    Field,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sidecar.config.auth import PLAINTEXT_ERROR, Auth, credential_urls
from sidecar.config.egress import EgressProxy
from sidecar.config.fields import HttpUrlStr, MatchHost, Model
from sidecar.config.interception import Interception
from sidecar.config.sections import Listen, Log, Reload, Shutdown, Timeouts, Tls
from sidecar.config.store import Store
from sidecar.http1.retry_after import DEFAULT_RETRY_AFTER


class HeaderDate(Model):
    """How ``{now}`` and ``{login_time}`` are written in ``headers``: KISC's samples use
    ISO-8601 with an offset, FAPI asks for an HTTP-date."""

    format: Literal["iso8601", "http"] = "iso8601"
    utc_offset: str = Field("+00:00", pattern=r"^[+-](0\d|1[0-4]):[0-5]\d$")


class RateLimit(Model):
    """At most ``rps`` requests a second leave for the upstream (``burst`` at once); one that
    would queue longer than ``max_wait`` seconds gets the sidecar's 429."""

    rps: float = Field(gt=0)
    burst: int = Field(1, ge=1)
    max_wait: float = Field(30.0, ge=0)
    default_retry_after: float = Field(
        DEFAULT_RETRY_AFTER, ge=0, description="an upstream 429 without one"
    )


class CircuitBreaker(Model):
    """After ``failures`` connect failures or timeouts in a row, requests fail fast (503
    ``upstream_unavailable``) for ``cool_down`` seconds; then one probe goes through. Each
    probe that fails doubles the cool-down, up to ``max_cool_down``."""

    failures: int = Field(5, ge=1)
    cool_down: float = Field(5.0, gt=0)
    max_cool_down: float = Field(300.0, gt=0)

    @model_validator(mode="after")
    def _max_not_below(self) -> CircuitBreaker:
        if self.max_cool_down < self.cool_down:
            raise ValueError(
                f"max_cool_down ({self.max_cool_down:g}) is below cool_down "
                f"({self.cool_down:g}); raise max_cool_down or lower cool_down"
            )
        return self


class Replay(Model):
    """After a 401 for a token that was itself fetched because of a 401 less than
    ``min_interval`` seconds ago, no new login: the 401 goes to the app (a 401 for a
    permission, not the token, would otherwise cost one login per request)."""

    min_interval: float = Field(10.0, ge=0)


HeaderName = Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]


def _check_header_template(value: str) -> str:
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError("header values cannot contain line breaks")
    leftover = value.replace("{uuid}", "").replace("{now}", "").replace("{login_time}", "")
    if "{" in leftover or "}" in leftover:
        raise ValueError(
            f"unknown placeholder in {value!r}: only {{uuid}}, {{now}} and {{login_time}} exist"
        )
    return value


_NOT_SETTABLE = frozenset({
    "host", "authorization", "content-length", "transfer-encoding", "connection", "te",
    "upgrade", "keep-alive", "proxy-connection", "expect", "trailer",
})


class Upstream(Model):
    match: list[MatchHost] = Field(min_length=1)
    target: HttpUrlStr
    tls: Tls = Tls()
    auth: Auth
    headers: dict[HeaderName, Annotated[str, AfterValidator(_check_header_template)]] = {}
    # Always sent, replacing what the app sent (xTrace answers 406 without "Accept: */*").
    set_headers: dict[HeaderName, Annotated[str, AfterValidator(_check_header_template)]] = {}
    header_date: HeaderDate = HeaderDate()
    require_headers: dict[str, list[HeaderName]] = {}
    rate_limit: RateLimit | None = None
    retry_on_429: bool = False
    max_body: int | None = Field(None, gt=0)
    replay_limit: int = Field(1024 * 1024, ge=0)
    replay: Replay = Replay()
    # Connections to the target at most; requests beyond wait (up to timeouts.connect) for
    # one to come free.
    max_connections: int = Field(64, ge=1)
    timeouts: Timeouts = Timeouts()
    # null: never fail fast (every request waits for its own connect timeout).
    circuit_breaker: CircuitBreaker | None = CircuitBreaker()
    eager: bool = True
    # Plain http:// for the IdP (token_url, passport_url, base_url) sends credentials in clear:
    # refused unless this is set (a test stand on a trusted network).
    allow_plaintext: bool = False
    # Not given: the top-level egress_proxy; null: this upstream goes direct.
    egress_proxy: EgressProxy | None = None
    # With a top-level interception block: false keeps CONNECT to this upstream's hosts
    # refused (or tunnelled untouched when they are in passthrough).
    interception: bool = True

    @field_validator("set_headers")
    @classmethod
    def _settable(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if name.lower() in _NOT_SETTABLE:
                raise ValueError(
                    f"{name} is written by the sidecar itself (framing, routing or the token): "
                    "remove it from set_headers"
                )
        return value

    @field_validator("require_headers")
    @classmethod
    def _methods_upper(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for method in value:
            if method != "*" and not method.isalpha():
                raise ValueError(f"{method!r} is not an HTTP method (or * for every method)")
        return {m.upper(): [h.lower() for h in names] for m, names in value.items()}

    @field_validator("target")
    @classmethod
    def _plain_origin(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.query or parts.fragment:
            raise ValueError("target is an origin (and optional path prefix): no query or fragment")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _token_header_not_set(self) -> Upstream:
        header = getattr(self.auth, "token_header", "Authorization").lower()
        if any(name.lower() == header for name in self.set_headers):
            raise ValueError(
                f"set_headers: {header} carries the token (auth.token_header); remove it"
            )
        return self

    @model_validator(mode="after")
    def _credentials_encrypted(self) -> Upstream:
        if self.allow_plaintext:
            return self
        for field, url in credential_urls(self.auth).items():
            if urlsplit(url).scheme == "http":
                # The upstream's name is the key above this block: the loader's error
                # formatter writes the fix with the full path (see loader.format_errors).
                raise PydanticCustomError(
                    PLAINTEXT_ERROR,
                    "auth.{field}: plain http:// would send credentials in clear",
                    {"field": field},
                )
        return self

    @property
    def plaintext_target(self) -> bool:
        """Requests (with their tokens) go to the target unencrypted, and nobody said so."""
        return urlsplit(self.target).scheme == "http" and not self.allow_plaintext


class Config(BaseSettings):
    """The whole file. ``load_config`` reads it with pydantic-settings sources: the YAML file,
    under ``SIDECAR_<SECTION>__<FIELD>`` variables (see sources.py)."""

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        # YAML keys are exact ("LISTEN:" is a typo); env names are matched ignoring case by
        # the env source, which is built case-insensitive (sources.EnvOverrides).
        case_sensitive=True,
        env_prefix="SIDECAR_",
        env_nested_delimiter="__",
    )

    listen: Listen = Listen()
    log: Log = Log()
    shutdown: Shutdown = Shutdown()
    reload: Reload = Reload()
    upstreams: dict[str, Upstream] = Field(min_length=1)
    passthrough: list[MatchHost] = []
    # Shared token state and rate limits for replicas that share credentials (memory: none).
    store: Store = Store()
    # Request bodies kept for a replay after a 401, all requests together. Past it a request
    # is still forwarded, only not replayable: memory stays bounded under many large uploads.
    replay_budget: int = Field(32 * 1024 * 1024, ge=0)
    # The corporate proxy every upstream's connections leave through, unless it sets its own.
    egress_proxy: EgressProxy | None = None
    # Present: CONNECT to a matched host is intercepted with the sidecar's own CA.
    interception: Interception | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Config(**data) validates exactly the data given (validate_config). The file and the
        # environment are read by load_config, which hands its sources in (_build_sources):
        # they need a path and an environment per call, and this hook takes neither.
        return (init_settings,)

    @model_validator(mode="after")
    def _inherit_egress_proxy(self) -> Config:
        """An upstream without its own ``egress_proxy`` key takes the top-level one, so that
        each upstream carries what it uses (and a change to it rebuilds the upstream)."""
        if self.egress_proxy is None:
            return self
        upstreams = {
            name: upstream
            if "egress_proxy" in upstream.model_fields_set
            else upstream.model_copy(update={"egress_proxy": self.egress_proxy})
            for name, upstream in self.upstreams.items()
        }
        object.__setattr__(self, "upstreams", upstreams)  # frozen: set once, while validating
        return self

    @model_validator(mode="after")
    def _store_complete(self) -> Config:
        problem = self.store.problem()
        if problem is not None:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _hosts_unique(self) -> Config:
        seen: dict[str, str] = {}
        for name, upstream in self.upstreams.items():
            for host in upstream.match:
                if host in seen:
                    raise ValueError(
                        f"upstreams.{name}.match: {host!r} is already matched by "
                        f"upstreams.{seen[host]}"
                    )
                seen[host] = name
        return self
