"""An offline sandbox: a private CA, a Keycloak-like IdP and an NTB-like API over TLS.

Users start it to try the sidecar without MOEX credentials; the test-suite uses it as
a faithful upstream.
"""

from sidecar.sandbox.keycloak import KeycloakEmulator
from sidecar.sandbox.ntb import NtbApi, download_bytes, download_sha256
from sidecar.sandbox.pki import IssuedCert, Pki
from sidecar.sandbox.servers import SandboxStack, TlsServer, start_sandbox, stop_sandbox

__all__ = [
    "IssuedCert",
    "KeycloakEmulator",
    "NtbApi",
    "Pki",
    "SandboxStack",
    "TlsServer",
    "download_bytes",
    "download_sha256",
    "start_sandbox",
    "stop_sandbox",
]
