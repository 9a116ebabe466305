"""A sidecar with interception on (its CA generated into the test's state dir), the CA's
PEM path for clients that trust it, and a way to run a real client without blocking."""

from __future__ import annotations

import asyncio
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.app import Sidecar
from tests.helpers.sidecars import SidecarFactory

HOST = "api.moex.com"  # matched by the sandbox's moex-ntb upstream
MIB = 1024 * 1024


@dataclass
class Intercepting:
    sidecar: Sidecar
    ca_file: Path  # the CA certificate (PEM), as `sidecar ca export` prints it
    proxy: str  # http://127.0.0.1:port

    @property
    def port(self) -> int:
        return self.sidecar.proxy_port


@pytest.fixture
async def intercepting(make_sidecar: SidecarFactory, tmp_path: Path) -> Intercepting:
    state = tmp_path / "interception"
    sidecar = await make_sidecar(interception={"state_dir": str(state)})
    return Intercepting(sidecar, state / "tls.crt", f"http://127.0.0.1:{sidecar.proxy_port}")


def client_env(**extra: str) -> dict[str, str]:
    """The environment without any proxy or trust settings of the machine's own."""
    env = {
        k: v for k, v in os.environ.items()
        if k.lower() not in {
            "http_proxy", "https_proxy", "all_proxy", "no_proxy", "requests_ca_bundle",
            "ssl_cert_file", "curl_ca_bundle", "node_extra_ca_certs",
        }
    }
    env.update(extra)
    return env


async def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[bytes]:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=env or client_env(), cwd=cwd,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return subprocess.CompletedProcess(args, proc.returncode or 0, out, err)
