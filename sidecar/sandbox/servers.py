"""Serving the sandbox applications over real TLS on the loopback interface."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from sidecar.sandbox import logfilter
from sidecar.sandbox.keycloak import KeycloakEmulator
from sidecar.sandbox.ntb import NtbApi
from sidecar.sandbox.pki import IssuedCert, Pki

__all__ = ["SandboxStack", "TlsServer", "start_sandbox", "stop_sandbox"]

_LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


class TlsServer:
    """One aiohttp app served on 127.0.0.1 with TLS; port 0 = ephemeral."""

    def __init__(
        self,
        app: web.Application,
        ssl_context: ssl.SSLContext | None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        shutdown_timeout: float = 1.0,
    ) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self.host = host
        self.port = port
        # Short, so a hung or slow handler never holds up stop() for long.
        self.shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._runner is not None

    async def start(self) -> None:
        """Start serving; after a stop() this binds the same port again."""
        if self._runner is not None:
            raise RuntimeError("server already started")
        logfilter.install()
        runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=self.shutdown_timeout,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        # Remember the real port so a restart comes back where clients expect it.
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


@dataclass
class SandboxStack:
    """Everything ``start_sandbox`` started, with the values a sidecar config needs."""

    pki: Pki
    idp: KeycloakEmulator
    ntb: NtbApi
    idp_server: TlsServer
    api_server: TlsServer
    client_cert: IssuedCert  # the sidecar's client certificate, CN "sidecar"
    token_url: str
    api_url: str
    # Whether the NTB API demands a client certificate. MOEX publishes no such requirement
    # for NTB, so it is off by default; tests of mTLS turn it on.
    ntb_mtls: bool = False

    def client_ssl_context(self, *, with_client_cert: bool = True) -> ssl.SSLContext:
        """A client context trusting the sandbox CA, presenting the sidecar cert if asked."""
        return self.pki.client_ssl_context(self.client_cert if with_client_cert else None)


async def start_sandbox(
    directory: Path,
    *,
    require_client_cert: bool = False,
    access_ttl: float = 300,
    refresh_ttl: float = 1800,
    idp_port: int = 0,
    api_port: int = 0,
) -> SandboxStack:
    """Create the PKI in ``directory`` and start the IdP and the NTB API over TLS.

    ``require_client_cert`` makes the NTB API an mTLS server (a test option: MOEX asks no
    client certificate for NTB); the client certificate is issued either way.
    """
    pki = Pki(Path(directory))
    idp_cert = pki.issue_server("idp", _LOOPBACK_HOSTS)
    api_cert = pki.issue_server("api", _LOOPBACK_HOSTS)
    client_cert = pki.issue_client("sidecar", "sidecar")

    idp = KeycloakEmulator(access_ttl=access_ttl, refresh_ttl=refresh_ttl)
    ntb = NtbApi(idp.is_access_token_valid)
    idp_server = TlsServer(idp.app, pki.server_ssl_context(idp_cert), port=idp_port)
    api_server = TlsServer(
        ntb.app,
        pki.server_ssl_context(api_cert, require_client_cert=require_client_cert),
        port=api_port,
    )
    await idp_server.start()
    try:
        await api_server.start()
    except BaseException:
        await idp_server.stop()
        raise
    return SandboxStack(
        pki=pki,
        idp=idp,
        ntb=ntb,
        idp_server=idp_server,
        api_server=api_server,
        client_cert=client_cert,
        token_url=idp_server.url + idp.token_path,
        api_url=api_server.url,
        ntb_mtls=require_client_cert,
    )


async def stop_sandbox(stack: SandboxStack) -> None:
    """Stop both servers; safe to call more than once."""
    try:
        await stack.api_server.stop()
    finally:
        await stack.idp_server.stop()
