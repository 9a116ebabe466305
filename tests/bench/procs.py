"""Starting and stopping the benchmark's processes, CPU pinning, ports and waiting.

Every process is started through :class:`Procs`, in a session of its own (so a Ctrl-C on
the terminal reaches only the harness) and with the parent-death signal set (so a killed
harness takes it along). ``Procs.close`` stops them all: SIGTERM to the process group, then
SIGKILL for whatever is left after a few seconds. The harness calls it in ``finally``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Pinning", "Procs", "free_port", "http_status", "wait_until"]

_PR_SET_PDEATHSIG = 1
_STOP_WAIT = 5.0


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL when the harness goes away, however it ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


@dataclass(frozen=True)
class Pinning:
    """Which CPUs the proxy under test gets, and which the load side (wrk, upstream, IdP).

    On two or more CPUs the proxy gets the last one alone and everything else shares the
    rest; on one CPU nothing is pinned.
    """

    proxy: frozenset[int]
    load: frozenset[int]

    @classmethod
    def detect(cls) -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(frozenset(cpus), frozenset(cpus))
        return cls(frozenset(cpus[-1:]), frozenset(cpus[:-1]))

    @property
    def pinned(self) -> bool:
        return self.proxy != self.load

    def describe(self) -> str:
        if not self.pinned:
            return "not pinned (one CPU)"
        return (
            f"proxy under test on CPU {_cpus(self.proxy)}; wrk, curl, the upstream nginx and "
            f"the IdP on CPU {_cpus(self.load)}"
        )

    def taskset(self, cpus: frozenset[int]) -> list[str]:
        return ["taskset", "-c", _cpus(cpus)] if self.pinned else []


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def free_port() -> int:
    """A port on 127.0.0.1 free right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def http_status(url: str, *, proxy: str | None = None, timeout: float = 2.0) -> int | None:
    """The status of a GET (through a forward proxy if given), or None if it failed."""
    handlers: list[urllib.request.BaseHandler] = [
        urllib.request.ProxyHandler({"http": proxy} if proxy else {})
    ]
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=timeout) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


class Procs:
    """The processes a run started; ``close`` stops every one of them."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._live: list[tuple[str, subprocess.Popen[Any]]] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process; its stdout and stderr go to ``<log_dir>/<name>.log``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=None if env is None else {**os.environ, **env},
                cwd=cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        self._live.append((name, proc))
        return proc

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command to completion (wrk, curl) and capture its output."""
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=None if env is None else {**os.environ, **env},
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._live.append((argv[0], proc))
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            out, err = proc.communicate()
            raise TimeoutError(f"{argv[0]} ran longer than {timeout:g} s") from None
        finally:
            self._forget(proc)
        return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        _stop(proc)
        self._forget(proc)

    def close(self) -> None:
        """Stop everything still running, newest first."""
        while self._live:
            _, proc = self._live.pop()
            _stop(proc)

    def _forget(self, proc: subprocess.Popen[Any]) -> None:
        self._live = [(n, p) for n, p in self._live if p is not proc]


def _stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM to the process group, SIGKILL to what is left, and reap the leader."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=_STOP_WAIT)
        except subprocess.TimeoutExpired:
            pass
    # Children of the leader (proxy.py's workers) may outlive it: kill the whole group.
    _signal_group(proc.pid, signal.SIGKILL)
    try:
        proc.wait(timeout=_STOP_WAIT)
    except subprocess.TimeoutExpired:
        pass


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
