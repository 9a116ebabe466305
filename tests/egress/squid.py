"""A real Squid as the corporate egress proxy: basic auth through its ``basic_ncsa_auth``
helper, CONNECT allowed to any port (the sandbox listens on ephemeral ones), an access log
that records every header Squid was sent, on 127.0.0.1 and an ephemeral port."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SQUID = shutil.which("squid") or "/usr/sbin/squid"
NCSA_AUTH = "/usr/lib/squid/basic_ncsa_auth"
USER, PASSWORD = "sidecar", "proxy-pass-7"

CONF = """\
http_port 127.0.0.1:{port}
visible_hostname egress-test
pid_filename {dir}/squid.pid
cache_log {dir}/cache.log
# Every request header Squid was sent: a token or a body in clear would show here.
logformat egress %ts %>Hs %rm %ru [%>h]
access_log stdio:{dir}/access.log egress
buffered_logs off
cache_store_log none
cache deny all
cache_mem 8 MB
coredump_dir {dir}
pinger_enable off
shutdown_lifetime 0 seconds
auth_param basic program {ncsa} {dir}/passwd
auth_param basic children 2 startup=1 idle=1
auth_param basic realm egress-test
acl authed proxy_auth REQUIRED
acl CONNECT method CONNECT
acl tunnel_ports port 1-65535
http_access deny CONNECT !tunnel_ports
http_access allow authed
http_access deny all
{user}
"""


def available() -> bool:
    return Path(SQUID).exists() and Path(NCSA_AUTH).exists() and shutil.which("openssl") is not None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Squid:
    """Started by :meth:`start`, stopped by :meth:`stop`; ``access_log`` is its log so far."""

    def __init__(self) -> None:
        # Squid started as root runs as "proxy": its files live in a directory that user owns
        # (pytest's own tmp directories are private to root).
        self.dir = Path(tempfile.mkdtemp(prefix="egress-squid-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        hashed = subprocess.run(
            ["openssl", "passwd", "-apr1", "-stdin"], input=PASSWORD.encode(),
            capture_output=True, check=True,
        ).stdout.decode().strip()
        (self.dir / "passwd").write_text(f"{USER}:{hashed}\n")
        as_root = os.geteuid() == 0
        for _ in range(3):  # the port is picked free, then bound by Squid: retry a lost race
            self.port = free_port()
            (self.dir / "squid.conf").write_text(CONF.format(
                port=self.port, dir=self.dir, ncsa=NCSA_AUTH,
                user="cache_effective_user proxy" if as_root else "",
            ))
            if as_root:
                proxy = pwd.getpwnam("proxy")
                for path in (self.dir, *self.dir.iterdir()):
                    os.chown(path, proxy.pw_uid, proxy.pw_gid)
            self.proc = subprocess.Popen(
                [SQUID, "-N", "-f", str(self.dir / "squid.conf")],
                stdout=subprocess.DEVNULL, stderr=(self.dir / "stderr").open("wb"),
            )
            if self._wait_listening(timeout):
                return
            self.stop()
        raise RuntimeError(f"squid did not start: {self.log('cache.log')[-2000:]}")

    def _wait_listening(self, timeout: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=1
            ):
                return True
            time.sleep(0.05)
        return False

    def log(self, name: str = "access.log") -> str:
        try:
            return (self.dir / name).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """The access log once it holds ``text`` (Squid writes a CONNECT's line when the
        tunnel closes), or as it is when ``timeout`` runs out."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return log

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
