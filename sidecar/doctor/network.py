"""The network steps towards one HTTPS endpoint: DNS, TCP connect, TLS handshake (version,
chain against the configured CAs, host name, expiry), the client certificate accepted, the
server's clock, and an HTTP answer. Each failure is explained with its fix.

The connection is made by hand (not by the HTTP client the proxy uses): each stage's error
must be told apart, and a refused client certificate only shows as an alert on the first
read after a TLS 1.3 handshake.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from cryptography import x509

from sidecar.doctor.report import Status, Step
from sidecar.tls import CERT_WARNING_DAYS

CLOCK_SKEW_LIMIT = 60.0  # seconds; tokens carry iat/nbf/exp, JWT checks allow about this much

# OpenSSL verify codes (X509_V_ERR_*) the doctor explains.
_EXPIRED = {10}
_NOT_YET_VALID = {9}
_UNTRUSTED = {2, 18, 19, 20, 21}
_NAME_MISMATCH = {62, 64}
# Alerts a server sends when it refuses the client certificate (or wants one).
_CLIENT_CERT_ALERTS = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA",
                       "CERTIFICATE_EXPIRED", "CERTIFICATE_REVOKED", "CERTIFICATE_UNKNOWN",
                       "ACCESS_DENIED", "HANDSHAKE_FAILURE")


@dataclass
class Endpoint:
    """One URL to check, with the TLS set-up the sidecar would use towards it."""

    upstream: str
    url: str
    ssl: ssl.SSLContext | None  # None: plain http://
    timeout: float
    tls_field: str  # the config block the fix points at (upstreams.x.tls)
    ca_label: str  # "ca_file /path" or "the system CA store"
    client_cert: str | None  # subject of the configured client certificate
    client_cert_expired: str | None = None  # its expiry date when it has expired
    steps: list[Step] = field(default_factory=list)
    status: int | None = None  # the HTTP status of the answer, when one came

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def add(self, step: str, status: Status, detail: str, fix: str = "", where: str = "") -> None:
        self.steps.append(Step(self.upstream, step, where or self.where, status, detail, fix))


async def check_endpoint(ep: Endpoint) -> bool:
    """Run the steps; True when the endpoint answered over HTTP(S)."""
    try:
        infos = await asyncio.wait_for(
            asyncio.get_running_loop().getaddrinfo(ep.host, ep.port, type=socket.SOCK_STREAM),
            ep.timeout,
        )
    except (OSError, TimeoutError) as exc:
        reason = getattr(exc, "strerror", None) or "no answer from DNS in time"
        ep.add("dns", "fail", f"cannot resolve {ep.host}: {reason}",
               "check the name; in a pod, check cluster DNS, or add a hosts entry "
               "(Kubernetes: hostAliases) for a test stand without public DNS")
        return False
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    ep.add("dns", "ok", ", ".join(addresses[:4]))

    address = addresses[0]
    try:
        sock = await asyncio.to_thread(socket.create_connection, (address, ep.port), ep.timeout)
    except TimeoutError:
        ep.add("tcp", "fail", f"no answer from {address}:{ep.port} in {ep.timeout:g} s",
               "a firewall or egress rule dropping the port? (MOEX test stands: 443/8243; "
               "some are open only in business hours)")
        return False
    except OSError as exc:
        ep.add("tcp", "fail", f"{address}:{ep.port}: {exc.strerror or exc}",
               "is the service up and the port right? Connection refused means nothing "
               "listens there (or a firewall rejects)")
        return False
    sock.close()
    ep.add("tcp", "ok", f"connected to {address}:{ep.port}")
    if ep.ssl is None:
        ep.add("tls", "skip", "plain http://: no TLS")
    return await asyncio.to_thread(_answer, ep, address)


def _answer(ep: Endpoint, address: str) -> bool:
    """Handshake (when TLS), then one HEAD request: the answer proves the client certificate
    was taken and carries the server's ``Date``. Blocking, in a thread: a blocking TLS socket
    reports the server's alert (asyncio's only sees the connection end)."""
    ctx = ep.ssl
    try:
        raw = socket.create_connection((address, ep.port), ep.timeout)
    except OSError as exc:
        ep.add("tls", "fail", f"cannot connect again: {exc.strerror or exc}", "")
        return False
    try:
        try:
            sock = ctx.wrap_socket(raw, server_hostname=ep.host) if ctx is not None else raw
        except ssl.SSLCertVerificationError as exc:
            _explain_verification(ep, address, exc)
            return False
        except ssl.SSLError as exc:
            _explain_tls_error(ep, exc, during_handshake=True)
            return False
        except OSError as exc:
            ep.add("tls", "fail", f"handshake did not complete: {exc.strerror or exc}",
                   "the server closed the connection: is this port TLS (https://)?")
            return False
        version = None
        if isinstance(sock, ssl.SSLSocket):
            version = sock.version()
            _report_handshake(ep, sock)
        path = urlsplit(ep.url).path or "/"
        request = (f"HEAD {path} HTTP/1.1\r\nHost: {ep.host}\r\n"
                   "User-Agent: authsidecar-doctor\r\nConnection: close\r\n\r\n").encode()
        try:
            sock.sendall(request)
            head = _read_head(sock)
        except ssl.SSLError as exc:
            _explain_tls_error(ep, exc, during_handshake=False)
            return False
        except OSError as exc:
            ep.add("http", "fail", f"no HTTP answer: {exc.strerror or exc}",
                   "if the server requires a client certificate, check it is the one it "
                   "expects")
            return False
    finally:
        raw.close()
    if not head and version == "TLSv1.3":
        # A TLS 1.3 server checks the client certificate after the handshake; one that
        # refuses it closes the connection, sending an alert or (some servers) not.
        _client_cert_refused(ep, "the connection was closed right after the handshake")
        return False
    lines = head.decode("latin-1").split("\r\n")
    try:
        ep.status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        ep.add("http", "fail", "the server closed the connection without an HTTP answer",
               "is the URL's port the API's? If the server requires a client certificate, "
               "check it is the one it expects")
        return False
    if ctx is not None:
        if ep.client_cert:
            ep.add("client_cert", "ok", f"accepted ({ep.client_cert})")
        else:
            ep.add("client_cert", "skip", "none configured (the server did not ask for one)")
    _report_clock(ep, lines)
    return True


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _report_handshake(ep: Endpoint, sock: ssl.SSLSocket) -> None:
    der = sock.getpeercert(binary_form=True)
    version = sock.version() or "?"
    if not der:
        ep.add("tls", "ok", f"{version} (verification off: tls.verify false)")
        return
    cert = x509.load_der_x509_certificate(der)
    days = (cert.not_valid_after_utc - datetime.now(UTC)).total_seconds() / 86400
    detail = f"{version}, server certificate {cert.subject.rfc4514_string()}, trusted by " \
        f"{ep.ca_label}, expires in {days:.0f} days"
    if days < CERT_WARNING_DAYS:
        ep.add("tls", "warn", detail, "the server's certificate expires soon: tell its operators")
    else:
        ep.add("tls", "ok", detail)


def _explain_verification(ep: Endpoint, address: str, exc: ssl.SSLCertVerificationError) -> None:
    cert = _unverified_certificate(ep, address)
    code = exc.verify_code
    subject = cert.subject.rfc4514_string() if cert else "?"
    issuer = cert.issuer.rfc4514_string() if cert else "?"
    if code in _EXPIRED:
        when = f" on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC" if cert else ""
        ep.add("tls", "fail", f"the server's certificate ({subject}) expired{when}",
               "the server must renew its certificate; if this machine's clock is wrong, fix "
               "the clock (NTP)")
    elif code in _NOT_YET_VALID:
        ep.add("tls", "fail", f"the server's certificate ({subject}) is not valid yet",
               "this machine's clock is probably behind: fix it (NTP)")
    elif code in _NAME_MISMATCH:
        names = ", ".join(_names(cert)) if cert else "?"
        ep.add("tls", "fail", f"the server's certificate is for {names}, not {ep.host}",
               "use a host name the certificate names in the URL (with a hosts entry if "
               "needed), or ask for a certificate that names this host")
    elif code in _UNTRUSTED:
        ep.add("tls", "fail", f"the server's certificate chain (issuer: {issuer}) is not "
               f"trusted by {ep.ca_label}: {exc.verify_message}",
               f"set {ep.tls_field}.ca_file to the PEM certificate of the CA that issued it "
               f"({issuer})")
    else:
        ep.add("tls", "fail", f"certificate verification failed: {exc.verify_message}",
               f"check {ep.tls_field}.ca_file and the server's certificate")


def _explain_tls_error(ep: Endpoint, exc: ssl.SSLError, *, during_handshake: bool) -> None:
    reason = exc.reason or str(exc)
    if any(alert in reason for alert in _CLIENT_CERT_ALERTS):
        if during_handshake and "HANDSHAKE_FAILURE" in reason:
            ep.add("tls", "fail", f"the server refused the handshake ({reason})",
                   "no common TLS version or cipher, or a client certificate it refused")
            return
        if during_handshake:
            ep.add("tls", "ok", "handshake started; the server then refused the client")
        _client_cert_refused(ep, reason)
        return
    if "WRONG_VERSION_NUMBER" in reason or "PROTOCOL" in reason or "VERSION" in reason:
        ep.add("tls", "fail", f"no common TLS version ({reason})",
               "the sidecar speaks TLS 1.2 and 1.3; a server limited to older versions "
               "cannot be reached; or the port does not speak TLS (an http:// port?)")
        return
    ep.add("tls", "fail", f"TLS failed: {reason}", "check the URL's scheme and port")


def _client_cert_refused(ep: Endpoint, reason: str) -> None:
    if ep.client_cert is None:
        ep.add("client_cert", "fail", f"the server requires a client certificate ({reason})",
               f"set {ep.tls_field}.cert_file and key_file (or p12_file)")
    elif ep.client_cert_expired:
        ep.add("client_cert", "fail", f"refused ({reason}): the client certificate "
               f"({ep.client_cert}) expired on {ep.client_cert_expired}",
               "renew the client certificate and update its files")
    else:
        ep.add("client_cert", "fail", f"the server refused {ep.client_cert} ({reason})",
               "the server does not trust the certificate's issuer, or does not know this "
               "certificate: check it is the one registered for this API")


def _unverified_certificate(ep: Endpoint, address: str) -> x509.Certificate | None:
    """The server's certificate, read without verifying it: to name what was wrong."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((address, ep.port), ep.timeout) as raw, \
                ctx.wrap_socket(raw, server_hostname=ep.host) as sock:
            der = sock.getpeercert(binary_form=True)
    except OSError:  # ssl.SSLError included
        return None
    return x509.load_der_x509_certificate(der) if der else None


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [cert.subject.rfc4514_string()]
    return [str(n.value) for n in san]


def _report_clock(ep: Endpoint, lines: list[str]) -> None:
    date = next((ln.split(":", 1)[1].strip() for ln in lines[1:]
                 if ln.lower().startswith("date:")), None)
    if date is None:
        ep.add("clock", "skip", "the server sent no Date header")
        return
    try:
        server = parsedate_to_datetime(date)
    except (TypeError, ValueError):
        ep.add("clock", "skip", "the server's Date header is not a date")
        return
    skew = (datetime.now(UTC) - server).total_seconds()
    detail = f"this machine is {abs(skew):.0f} s {'ahead of' if skew > 0 else 'behind'} " \
        "the server"
    if abs(skew) > CLOCK_SKEW_LIMIT:
        ep.add("clock", "fail", detail,
               "sync this machine's clock (NTP): tokens would look expired or not yet valid")
    else:
        ep.add("clock", "ok", detail)
