"""How a connection to an origin is opened: straight to it, or through an HTTP proxy with a
``CONNECT host:port`` tunnel (a corporate egress proxy), inside which TLS runs end to end.

A :class:`Dialer` says which origins go through which :class:`Tunnel`; :func:`open_tunnel`
does the CONNECT exchange on a non-blocking socket, which the caller then hands to
``loop.create_connection(sock=...)`` for TLS and HTTP as on a direct connection. Nothing here
knows about config: the proxy's address and the ``Proxy-Authorization`` value come in ready.
A failed tunnel is never retried direct: a network that mandates a proxy drops direct traffic,
and a silent bypass would hide the misconfiguration.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import socket
from dataclasses import dataclass, field

from sidecar.http1.errors import (
    ProxyAuthRefused,
    ProxyRefused,
    ProxyUnreachable,
    TimedOut,
    printable,
)

MAX_PROXY_HEAD = 16 * 1024  # a CONNECT answer's head; a proxy sending more is refused


def basic_authorization(user: str, password: str) -> str:
    """``Basic base64(user:password)``, the ``Proxy-Authorization`` value Squid expects."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


@dataclass(frozen=True, slots=True)
class Tunnel:
    """An HTTP proxy reached at ``proxy_host:proxy_port``; ``authorization`` is the whole
    ``Proxy-Authorization`` value (a secret: never in ``repr``, logs or errors)."""

    proxy_host: str
    proxy_port: int
    authorization: str | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        host = f"[{self.proxy_host}]" if ":" in self.proxy_host else self.proxy_host
        return f"{host}:{self.proxy_port}"


@dataclass(frozen=True, slots=True)
class Dialer:
    """Which origins go through ``tunnel``: all but the ``no_proxy`` ones (``host``,
    ``.suffix`` for a domain and its subdomains, ``host:port``, an IP or a CIDR block), and
    plain-HTTP origins only when ``plain_http``."""

    tunnel: Tunnel
    no_proxy: tuple[str, ...] = ()
    plain_http: bool = False

    def tunnel_for(self, host: str, port: int, tls: bool) -> Tunnel | None:
        if not tls and not self.plain_http:
            return None
        return None if bypassed(self.no_proxy, host, port) else self.tunnel


def bypassed(entries: tuple[str, ...], host: str, port: int) -> bool:
    """Whether ``host:port`` matches one of the ``no_proxy`` entries (lower case, checked)."""
    host = host.lower().rstrip(".").strip("[]")
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in entries:
        name, want_port = split_entry(entry)
        if want_port is not None and want_port != port:
            continue
        if "/" in name:
            if address is not None and address in ipaddress.ip_network(name, strict=False):
                return True
        elif name.startswith("."):
            if host == name[1:] or host.endswith(name):
                return True
        elif host == name:
            return True
    return False


def split_entry(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port``, ``v6``, ``10.0.0.0/8`` → (name, port or None)."""
    if entry.startswith("["):
        name, _, rest = entry[1:].partition("]")
        return name, int(rest[1:]) if rest.startswith(":") else None
    if entry.count(":") == 1:
        name, _, port = entry.partition(":")
        return name, int(port)
    return entry, None


async def open_tunnel(tunnel: Tunnel, host: str, port: int, timeout: float) -> socket.socket:
    """A socket to the proxy on which ``CONNECT host:port`` was answered 200, within
    ``timeout`` seconds. Failures are typed: :class:`ProxyUnreachable` (no connection to the
    proxy), :class:`ProxyAuthRefused` (407), :class:`ProxyRefused` (another answer, or none),
    :class:`TimedOut` (the proxy took the CONNECT but did not answer in time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        async with asyncio.timeout_at(deadline):
            sock = await _connect(loop, tunnel.proxy_host, tunnel.proxy_port)
    except TimeoutError:
        raise ProxyUnreachable(tunnel.label, f"no connection within {timeout:g} s") from None
    except OSError as exc:
        raise ProxyUnreachable(tunnel.label, _reason(exc)) from None
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        async with asyncio.timeout_at(deadline):
            lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
            if tunnel.authorization:
                lines.append(f"Proxy-Authorization: {tunnel.authorization}")
            await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            status, reason = await _read_answer(loop, sock, tunnel.label)
    except BaseException as exc:
        sock.close()  # cancelled too: the socket is not handed on
        if isinstance(exc, TimeoutError):
            raise TimedOut(f"{target} through egress proxy {tunnel.label}", timeout,
                           connecting=True) from None
        if isinstance(exc, OSError) and not isinstance(exc, ProxyRefused):
            raise ProxyRefused(
                tunnel.label, None, f"broke off the CONNECT ({_reason(exc)})"
            ) from None
        raise
    if status == 200:
        return sock
    sock.close()
    if status == 407:
        raise ProxyAuthRefused(tunnel.label, "rejected the proxy credentials (407)"
                               if tunnel.authorization else "asks for credentials (407)")
    raise ProxyRefused(tunnel.label, status, f"answered CONNECT {target} with {status} {reason}")


async def _connect(loop: asyncio.AbstractEventLoop, host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket, trying each address of ``host`` in turn."""
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError = OSError(f"no address for {host}")
    for family, kind, proto, _, address in infos:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, address)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise last


async def _read_answer(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, label: str
) -> tuple[int, str]:
    """The status and reason of the proxy's answer; its headers and any body are dropped
    (a 200 has neither, and an error's page is not needed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_PROXY_HEAD:
            raise ProxyRefused(label, None, f"answered CONNECT with over {MAX_PROXY_HEAD} bytes")
        chunk = await loop.sock_recv(sock, 4096)
        if not chunk:
            raise ProxyRefused(label, None, "closed the connection without answering CONNECT")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    version, _, tail = line.partition(" ")
    code, _, reason = tail.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ProxyRefused(label, None, f"answered CONNECT with {printable(line, 80)!r}")
    status = int(code)
    if status == 200 and rest:
        # Bytes before the client spoke cannot come from the origin (TLS and HTTP both wait
        # for the client): the proxy is not a plain CONNECT proxy.
        raise ProxyRefused(label, 200, "sent data before the tunnel was used")
    return status, printable(reason, 80)


def _reason(exc: OSError) -> str:
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the proxy's name ({exc.strerror})"
    return os.strerror(exc.errno) if exc.errno else (exc.strerror or str(exc) or "error")
