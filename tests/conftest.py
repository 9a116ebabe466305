"""Shared fixtures: the sandbox (real TLS and mTLS emulators) and sidecars in front of it.

The plain helpers the fixtures use (and tests import) live in :mod:`tests.helpers.sidecars`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from sidecar import logs
from sidecar.app import Sidecar
from sidecar.config import validate_config
from sidecar.sandbox.demo import kisc_upstream, sandbox_config
from sidecar.sandbox.moex import MoexStack, start_moex_registration
from sidecar.sandbox.registration import MSK
from sidecar.sandbox.servers import SandboxStack, start_sandbox, stop_sandbox
from sidecar.sandbox.wso2 import issue_kisc_client, start_wso2
from tests.helpers.scripted import ScriptedServers
from tests.helpers.sidecars import Kisc, SidecarFactory, deep_merge
from tests.helpers.sidecars import proxy_url as proxy_url  # kept for older imports

# Hypothesis profiles, chosen with HYPOTHESIS_PROFILE (or --hypothesis-profile).
# "ci", the default (make test): derandomized and with no example database, so every run
# tries the same inputs and CI never turns red by luck; each test keeps its example count.
# "fuzz" (make fuzz): random seeds and FUZZ_EXAMPLES per test, to find new failures; each
# one found becomes an @example on its test, so that ci runs it from then on.
settings.register_profile("ci", derandomize=True, database=None, deadline=None)
settings.register_profile(
    "fuzz",
    derandomize=False,
    deadline=None,
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "5000")),
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True, scope="session")
def _json_logs() -> None:
    logs.configure("info", "json")


@pytest.fixture
async def sandbox(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[SandboxStack]:
    # MOEX asks no client certificate for NTB; tests of mTLS opt in with @pytest.mark.ntb_mtls.
    mtls = request.node.get_closest_marker("ntb_mtls") is not None
    stack = await start_sandbox(tmp_path / "pki", require_client_cert=mtls)
    try:
        yield stack
    finally:
        await stop_sandbox(stack)


@pytest.fixture
def sidecar_config(sandbox: SandboxStack, tmp_path: Path) -> dict[str, Any]:
    """The sandbox config on ephemeral ports; tests change it before starting a sidecar."""
    return sandbox_config(
        sandbox, tmp_path / "secrets", proxy="127.0.0.1:0", admin="127.0.0.1:0"
    )


@pytest.fixture
async def make_sidecar(sidecar_config: dict[str, Any]) -> AsyncIterator[SidecarFactory]:
    started: list[Sidecar] = []

    async def make(upstream: dict[str, Any] | None = None, **top: Any) -> Sidecar:
        data = deep_merge(sidecar_config, top)
        if upstream:
            data["upstreams"]["moex-ntb"] = deep_merge(data["upstreams"]["moex-ntb"], upstream)
        sidecar = Sidecar(validate_config(data))
        await sidecar.start()
        started.append(sidecar)
        return sidecar

    yield make
    for sidecar in started:
        await sidecar.stop(grace=1.0)


@pytest.fixture
async def sidecar(make_sidecar: SidecarFactory) -> Sidecar:
    return await make_sidecar()


@pytest.fixture
async def scripted_upstreams(sandbox: SandboxStack) -> AsyncIterator[ScriptedServers]:
    """Starts scripted TLS upstreams (sandbox CA); stops them after the test."""
    async with ScriptedServers(sandbox.pki) as servers:
        yield servers


@pytest.fixture
async def moex(sandbox: SandboxStack) -> AsyncIterator[MoexStack]:
    """The MOEX registration API behind Passport, its clock in business hours. Modules that
    need another MOEX stand define their own ``moex``."""
    stack = await start_moex_registration(sandbox.pki, sandbox.idp)
    stack.registration.set_clock(datetime(2026, 11, 20, 12, 0, tzinfo=MSK))  # business hours
    try:
        yield stack
    finally:
        await stack.stop()


@pytest.fixture
async def kisc(sandbox: SandboxStack) -> AsyncIterator[Kisc]:
    gateway, server = await start_wso2(sandbox.pki)
    try:
        yield Kisc(gateway, server, sandbox.pki)
    finally:
        await server.stop()


@pytest.fixture
def kisc_config(kisc: Kisc, tmp_path: Path) -> dict[str, Any]:
    return kisc_upstream(
        kisc.gateway, kisc.server.url, kisc.pki, issue_kisc_client(kisc.pki), tmp_path / "kisc"
    )


@pytest.fixture
async def kisc_sidecar(make_sidecar: SidecarFactory, kisc_config: dict[str, Any]) -> Sidecar:
    return await make_sidecar(upstreams={"kisc": kisc_config})
