"""Configuration models: one class per YAML block, field names as in DESIGN.md.

Secrets are ``SecretStr``; every secret field ``x`` may be given as ``x_file`` instead
(a Kubernetes Secret mount), which :class:`SecretFiles` resolves before validation.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sidecar.errors import SetupError


def _check_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    host = parts.hostname
    if parts.scheme not in ("http", "https") or not host or any(c.isspace() for c in value):
        raise ValueError(
            f"not a valid URL: expected http:// or https:// with a host (got {value!r})"
        )
    if parts.username is not None or parts.password is not None:
        # Credentials in a URL would end up in /status and logs: they belong in secret fields.
        raise ValueError("URL must not carry a user or password; use the auth secret fields")
    return value


def _check_existing_file(value: Path) -> Path:
    if not value.is_file():
        raise ValueError(f"file not found: {value}")
    return value


def parse_host_port(value: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) into a lower-case host and a port."""
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"not host:port: {value!r}")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"not host:port: {value!r} has no host")
    if not port_text:
        if default_port is None:
            raise ValueError(f"not host:port: {value!r} has no port")
        return host.lower(), default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"not host:port: bad port in {value!r}")
    return host.lower(), int(port_text)


def _check_listen(value: str) -> str:
    host, _ = parse_host_port(value)
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"listen address must be an IP address, got {host!r}") from None
    return value


def _check_match(value: str) -> str:
    host, _ = parse_host_port(value, default_port=0)
    if "/" in host or "@" in host or " " in host:
        raise ValueError(f"not a host or host:port: {value!r}")
    return _strip_dot(value.strip().lower())


def _strip_dot(value: str) -> str:
    host, port = parse_host_port(value, default_port=0)
    host = host.rstrip(".")
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{host}:{port}" if port else host


HttpUrlStr = Annotated[str, AfterValidator(_check_url)]
ExistingFile = Annotated[Path, AfterValidator(_check_existing_file)]
ListenAddr = Annotated[str, AfterValidator(_check_listen)]
MatchHost = Annotated[str, AfterValidator(_check_match)]


class Model(BaseModel):
    """Strict base: unknown fields are errors, so a typo never silently does nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretFiles(Model):
    """Resolves ``x_file: /path`` into the secret field ``x`` before validation."""

    secret_fields: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _read_secret_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name in cls.secret_fields:
            path = data.pop(f"{name}_file", None)
            if path is None:
                continue
            if data.get(name) is not None:
                raise ValueError(f"give either {name} or {name}_file, not both")
            try:
                data[name] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except FileNotFoundError:
                raise ValueError(f"{name}_file: file not found: {path}") from None
            except UnicodeDecodeError:
                raise ValueError(f"{name}_file: cannot read {path}: not UTF-8 text") from None
            except OSError as exc:
                raise ValueError(f"{name}_file: cannot read {path}: {exc.strerror}") from None
        return data


class Listen(Model):
    proxy: ListenAddr = "127.0.0.1:8080"
    admin: ListenAddr = "0.0.0.0:9090"
    # An app connection without a complete request for this long is closed: idle keep-alive
    # connections, and clients that send their headers too slowly (slowloris).
    idle_timeout: float = Field(75.0, gt=0)


class Log(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class Tls(SecretFiles):
    """TLS towards a target or an IdP. Verification is on unless explicitly turned off."""

    secret_fields = ("p12_password",)

    ca_file: ExistingFile | None = None
    cert_file: ExistingFile | None = None
    key_file: ExistingFile | None = None
    p12_file: ExistingFile | None = None
    p12_password: SecretStr | None = None
    verify: bool = True
    system_ca: bool = False  # with ca_file: trust the system store too (else ca_file alone)

    @model_validator(mode="after")
    def _one_identity(self) -> Tls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        if self.p12_file is not None and self.cert_file is not None:
            raise ValueError("give either cert_file/key_file or p12_file, not both")
        return self

    @property
    def has_client_cert(self) -> bool:
        return self.cert_file is not None or self.p12_file is not None


class Shutdown(Model):
    """SIGTERM: /readyz fails at once; new connections are still taken for ``delay`` seconds
    (while Kubernetes removes the pod from endpoints), then in-flight requests get ``grace``."""

    delay: float = Field(5.0, ge=0)
    grace: float = Field(30.0, ge=0)


class Reload(Model):
    """Watch the config file and the files it names; a change reloads (as SIGHUP does)."""

    watch: bool = True
    interval: float = Field(2.0, gt=0)


class Timeouts(Model):
    connect: float = Field(10.0, gt=0)
    read: float = Field(60.0, gt=0)
    token_wait: float = Field(10.0, gt=0)


class AuthBase(SecretFiles):
    """Fields every token-fetching flow shares."""

    tls: Tls | None = None  # IdP calls; default: the upstream's tls block
    backoff_cap: float = Field(5.0, gt=0, description="seconds between failed logins, at most")
    timeout: float = Field(10.0, gt=0, description="seconds one IdP call may take")


class AuthCommon(AuthBase):
    """The OAuth2 token endpoint flows."""

    token_url: HttpUrlStr
    client_id: str | None = None
    scope: str | None = None


class OidcPasswordAuth(AuthCommon):
    secret_fields = ("password", "client_secret")

    type: Literal["oidc_password"]
    client_id: str
    username: str
    password: SecretStr
    client_secret: SecretStr | None = None
    scope: str | None = "openid email profile"


class ClientCredentialsAuth(AuthCommon):
    secret_fields = ("client_secret",)

    type: Literal["client_credentials"]
    client_id: str
    client_secret: SecretStr


class Wso2PasswordAuth(AuthCommon):
    """WSO2 API Manager (KISC): Basic consumer key/secret + password grant, over mTLS."""

    secret_fields = ("password", "consumer_secret")

    type: Literal["wso2_password"]
    consumer_key: str
    consumer_secret: SecretStr
    username: str
    password: SecretStr
    scope: str | None = "default"


class CommandSignerConfig(SecretFiles):
    """An external signer (OpenSSL with the GOST engine, CryptoPro cryptcp/csptest).

    ``{in}``/``{out}`` in argv stand for temporary files; without them the data goes to stdin
    and the signature comes from stdout. ``{pin_file}`` stands for a private temporary file
    holding the ``pin`` secret; ``{pin}`` for the secret itself (visible in the process list).
    The program's environment is PATH, HOME and LANG plus ``env``."""

    secret_fields = ("pin",)

    argv: list[str] = Field(min_length=1)
    timeout: float = Field(10.0, gt=0)
    output: Literal["der", "base64", "pem"] = "der"
    pin: SecretStr | None = None
    env: dict[str, str] = {}

    @model_validator(mode="after")
    def _pin_given(self) -> CommandSignerConfig:
        if any("{pin}" in a or "{pin_file}" in a for a in self.argv) and self.pin is None:
            raise ValueError("argv uses {pin} or {pin_file}: give pin or pin_file")
        return self


class NcaNodeSignerConfig(SecretFiles):
    """NCANode (Kalkan inside) for Kazakh GOST keys: v3 REST, or v2 JSON-RPC."""

    secret_fields = ("p12_password",)

    url: HttpUrlStr = "http://127.0.0.1:14579"
    p12_file: ExistingFile
    p12_password: SecretStr
    version: Literal[3, 2] = 3
    timeout: float = Field(10.0, gt=0)


class SignerConfig(SecretFiles):
    """How a login challenge is signed into a CMS (PKCS#7) SignedData."""

    secret_fields = ("key_password", "p12_password")

    type: Literal["pkcs7", "command", "ncanode"]
    # pkcs7: a PEM certificate and key, or a PKCS#12 bundle (RSA or EC keys).
    cert_file: ExistingFile | None = None
    key_file: ExistingFile | None = None
    key_password: SecretStr | None = None
    p12_file: ExistingFile | None = None
    p12_password: SecretStr | None = None
    detached: bool | None = None  # None: what the login flow needs (MOEX: true; MPT: false)
    digest: Literal["sha224", "sha256", "sha384", "sha512"] = "sha256"
    signed_attributes: bool = True
    include_certificate: bool = True
    command: CommandSignerConfig | None = None
    ncanode: NcaNodeSignerConfig | None = None

    @model_validator(mode="after")
    def _complete(self) -> SignerConfig:
        if self.type == "pkcs7":
            if self.p12_file is None and (self.cert_file is None or self.key_file is None):
                raise ValueError("a pkcs7 signer needs cert_file and key_file, or p12_file")
            if self.p12_file is not None and self.cert_file is not None:
                raise ValueError("give either cert_file/key_file or p12_file, not both")
        if self.type == "command" and self.command is None:
            raise ValueError("a command signer needs a command: {argv: [...]} block")
        if self.type == "ncanode" and self.ncanode is None:
            raise ValueError("an ncanode signer needs an ncanode: {url, p12_file, ...} block")
        return self

    def check_detached(self, detached: bool) -> None:
        """NCANode's v2 cms.sign always attaches the data: refuse what it cannot do."""
        if self.type == "ncanode" and self.ncanode and self.ncanode.version == 2 and detached:
            raise SetupError(
                "signer.ncanode.version 2 cannot make detached signatures (MOEX needs them); "
                "use version 3"
            )


class MoexPassportAuth(AuthCommon):
    """MOEX Passport two-factor login (PROTOCOLS §2): Passport token, detached signature."""

    secret_fields = ("password", "client_secret")

    type: Literal["moex_passport"]
    passport_url: HttpUrlStr
    client_id: str
    client_secret: SecretStr
    username: str
    password: SecretStr
    algorithm: Literal["RSA", "GOST"] = "RSA"
    scope: str | None = "client_registration"
    signer: SignerConfig


class MptSigninAuth(AuthBase):
    """ИС МПТ (Kazakhstan marking): sign the server's challenge as an attached CMS (PROTOCOLS §4).

    The token's lifetime is its JWT ``exp`` when it is a JWT, else ``token_ttl``."""

    type: Literal["mpt_signin"]
    base_url: HttpUrlStr  # e.g. https://stage.ismet.kz/api/v3/true-api
    signer: SignerConfig
    token_field: str = "token"
    token_ttl: float = Field(3600.0, gt=0)
    extra_fields: dict[str, str | int] = {}  # e.g. {inn: "123456789012"}


class StaticAuth(SecretFiles):
    """A fixed token. ``token_file`` is kept as a path: it is re-read when it changes."""

    type: Literal["static"]
    token: SecretStr | None = None
    token_file: ExistingFile | None = None

    @model_validator(mode="after")
    def _one_source(self) -> StaticAuth:
        if (self.token is None) == (self.token_file is None):
            raise ValueError("static auth needs exactly one of token or token_file")
        return self


Auth = Annotated[
    OidcPasswordAuth
    | ClientCredentialsAuth
    | Wso2PasswordAuth
    | MoexPassportAuth
    | MptSigninAuth
    | StaticAuth,
    Field(discriminator="type"),
]


class HeaderDate(Model):
    """How ``{now}`` is written in ``headers``: KISC's samples use ISO-8601 with an offset,
    FAPI asks for an HTTP-date."""

    format: Literal["iso8601", "http"] = "iso8601"
    utc_offset: str = Field("+00:00", pattern=r"^[+-](0\d|1[0-4]):[0-5]\d$")


class RateLimit(Model):
    """At most ``rps`` requests a second leave for the upstream (``burst`` at once); one that
    would queue longer than ``max_wait`` seconds gets the sidecar's 429."""

    rps: float = Field(gt=0)
    burst: int = Field(1, ge=1)
    max_wait: float = Field(30.0, ge=0)
    default_retry_after: float = Field(30.0, ge=0, description="an upstream 429 without one")


HeaderName = Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]


def _check_header_template(value: str) -> str:
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError("header values cannot contain line breaks")
    leftover = value.replace("{uuid}", "").replace("{now}", "")
    if "{" in leftover or "}" in leftover:
        raise ValueError(f"unknown placeholder in {value!r}: only {{uuid}} and {{now}} exist")
    return value


class Upstream(Model):
    match: list[MatchHost] = Field(min_length=1)
    target: HttpUrlStr
    tls: Tls = Tls()
    auth: Auth
    headers: dict[HeaderName, Annotated[str, AfterValidator(_check_header_template)]] = {}
    header_date: HeaderDate = HeaderDate()
    require_headers: dict[str, list[HeaderName]] = {}
    rate_limit: RateLimit | None = None
    retry_on_429: bool = False
    max_body: int | None = Field(None, gt=0)
    replay_limit: int = Field(1024 * 1024, ge=0)
    timeouts: Timeouts = Timeouts()
    eager: bool = True

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


class Config(BaseSettings):
    """The whole file. Environment overrides are applied by the loader (see loader.py)."""

    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    listen: Listen = Listen()
    log: Log = Log()
    shutdown: Shutdown = Shutdown()
    reload: Reload = Reload()
    upstreams: dict[str, Upstream] = Field(min_length=1)
    passthrough: list[MatchHost] = []

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The loader has merged YAML and SIDECAR_* variables already, resolving upstream
        # names ("moex-ntb" from MOEX_NTB), which the generic env source cannot do.
        return (init_settings,)

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
