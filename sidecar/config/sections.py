"""The smaller blocks of the config: listen, log, tls, shutdown, reload, timeouts."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    SecretStr,
    model_validator,
)

from sidecar.config.fields import ExistingFile, ListenAddr, Model, SecretFiles


class Listen(Model):
    proxy: ListenAddr = "127.0.0.1:8080"
    admin: ListenAddr = "0.0.0.0:9090"
    # An app connection without a complete request for this long is closed: idle keep-alive
    # connections, and clients that send their headers too slowly (slowloris).
    idle_timeout: float = Field(75.0, gt=0)
    # Open connections at most, per listener. Past it the longest-idle connection is closed
    # to make room, or the new one is when none is idle.
    max_connections: int = Field(1024, ge=1)
    admin_max_connections: int = Field(64, ge=1)
    # /status names targets, certificate subjects and IdP errors: by default it is served to
    # loopback clients only (kubectl exec / port-forward), not to the whole cluster.
    expose_status: bool = False


class Log(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class Tls(SecretFiles):
    """TLS towards a target or an IdP. Verification is on unless explicitly turned off."""

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
