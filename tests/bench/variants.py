"""The sidecar's variant rows, and the peer the TLS one stands beside.

- **sidecar, redis store:** the same sidecar with ``store: {type: redis}`` against a real
  ``redis-server`` (Debian's) on the load CPU. A cached token never calls Redis, so its CPU
  per request should match the memory store's.
- **sidecar, interception:** the app calls ``https://api.bench.test`` through the sidecar
  (CONNECT, then TLS with a leaf the sidecar mints from its own CA), loaded by hey.
- **envoy, TLS from the app:** Envoy terminating the app's TLS with a leaf for the same host,
  minted the same way from the same CA, also loaded by hey.

Both TLS rows carry the app's TLS on one side and mTLS to the upstream on the other.
"""

from __future__ import annotations

import base64
import os
import socket

from cryptography.hazmat.primitives import serialization

from sidecar.interception.ca import CertificateAuthority, generate_ca, write_ca
from sidecar.interception.leaves import mint_leaf
from tests.bench.install import Tools
from tests.bench.measure import run_hey
from tests.bench.peers import HOST, HeyLoad, Layout, Peer, Services, start_envoy, start_sidecar
from tests.bench.procs import Pinning, Procs, free_port, wait_until

__all__ = ["Redis", "TlsRows", "start_sidecar_redis"]

_START_TIMEOUT = 30.0
_PROBED = "200 through hey"  # what a hey-probed row's ``get`` gives when it answers 200


class Redis:
    """``redis-server`` on the load CPU, in memory only (no RDB or AOF files)."""

    def __init__(self, procs: Procs, layout: Layout, tools: Tools, pinning: Pinning) -> None:
        self.port = free_port()
        self.proc = procs.start(
            "redis",
            [*pinning.taskset(pinning.load), tools.redis_server, "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(layout.run)],
        )
        wait_until(self._answers, _START_TIMEOUT, "redis-server")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


def start_sidecar_redis(
    procs: Procs, layout: Layout, pinning: Pinning, services: Services, api_port: int,
    redis: Redis,
) -> Peer:
    key = layout.pki / "store.key"
    key.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    store = (f'store: {{type: redis, url: "redis://127.0.0.1:{redis.port}/0", '
             f'encryption_key_file: "{key}"}}')

    def shape(peer: Peer) -> None:
        peer.transfers = False  # the streaming path is the memory store's: measured once

    return start_sidecar(procs, layout, pinning, services, api_port, name="sidecar-redis",
                         extra=store, shape=shape)


class TlsRows:
    """The two rows whose app speaks TLS, sharing one CA (made as ``sidecar ca init`` does)."""

    def __init__(self, procs: Procs, layout: Layout, tools: Tools, pinning: Pinning,
                 services: Services, api_port: int) -> None:
        self.procs, self.layout, self.tools, self.pinning = procs, layout, tools, pinning
        self.services, self.api_port = services, api_port
        self.ca = generate_ca("authsidecar bench interception CA")
        self.ca_cert, self.ca_key = write_ca(self.ca, layout.pki / "interception")

    def sidecar(self) -> Peer:
        extra = (f'interception: {{ca_cert_file: "{self.ca_cert}", '
                 f'ca_key_file: "{self.ca_key}", state_dir: "{self.layout.run}"}}')

        def shape(peer: Peer) -> None:
            self._hey(peer, HeyLoad(f"https://{HOST}/small", peer.url, None))

        return start_sidecar(self.procs, self.layout, self.pinning, self.services,
                             self.api_port, name="sidecar-intercept", extra=extra, shape=shape)

    def envoy(self) -> Peer:
        leaf_file, key_file = self._leaf(self.ca)
        listener_tls = (
            "{name: envoy.transport_sockets.tls, typed_config: {"
            '"@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.'
            "DownstreamTlsContext, common_tls_context: {alpn_protocols: [http/1.1], "
            f'tls_certificates: [{{certificate_chain: {{filename: "{leaf_file}"}}, '
            f'private_key: {{filename: "{key_file}"}}}}]}}}}}}'
        )

        def shape(peer: Peer) -> None:
            peer.url = "https://" + peer.url.removeprefix("http://")
            peer.forward = False
            self._hey(peer, HeyLoad(f"{peer.url}/small", None, HOST))

        return start_envoy(self.procs, self.layout, self.tools, self.pinning, self.services,
                           self.api_port, name="envoy-tls", listener_tls=listener_tls,
                           shape=shape)

    def _leaf(self, ca: CertificateAuthority) -> tuple[str, str]:
        """What the sidecar mints for the host (EC P-256, SAN = the host), for Envoy."""
        cert, key = mint_leaf(ca, HOST)
        cert_file, key_file = self.layout.pki / "envoy-leaf.crt", self.layout.pki / "envoy-leaf.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        return str(cert_file), str(key_file)

    def _hey(self, peer: Peer, load: HeyLoad) -> None:
        """Load the row with hey, and probe it the same way: one GET that must answer 200."""

        def probe() -> tuple[int | None, str]:
            try:
                result = run_hey(self.procs, url=load.url, proxy=load.proxy, host=load.host,
                                 connections=1, duration=None, requests=1,
                                 taskset=self.pinning.taskset(self.pinning.load))
            except (RuntimeError, TimeoutError) as exc:
                return None, str(exc)
            if result.requests == 1 and result.non2xx == 0 and result.socket_errors == 0:
                return 200, _PROBED
            return None, f"hey: {result.requests} answered, {result.non2xx} of them >= 400"

        peer.hey, peer.transfers, peer.expect, peer.probe = load, False, _PROBED, probe
