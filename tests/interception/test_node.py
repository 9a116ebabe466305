"""Node ``fetch`` through undici's ``ProxyAgent`` with ``NODE_EXTRA_CA_CERTS``, and undici's
agents to an ``http://`` URL (they send ``CONNECT host:80`` and plain HTTP inside).

undici comes from npm, pinned by the committed package-lock.json and installed with
``npm ci`` into tests/interception/node/node_modules the first time."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.interception.conftest import HOST, Intercepting, client_env, run

NODE_DIR = Path(__file__).with_name("node")


@pytest.fixture(scope="module")
def node_client() -> Path:
    assert shutil.which("node") and shutil.which("npm"), "Node 20 and npm are needed"
    if not (NODE_DIR / "node_modules" / "undici" / "package.json").exists():
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True,
            timeout=180, check=False,
        )
        assert done.returncode == 0, (
            "`npm ci` in tests/interception/node failed (is the npm registry reachable?):\n"
            + done.stderr.decode()
        )
    return NODE_DIR / "client.mjs"


async def _node(client: Path, *args: str, **env: str) -> dict[str, str]:
    done = await run("node", str(client), *args, env=client_env(**env), cwd=NODE_DIR)
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, str] = json.loads(done.stdout)
    return result


async def test_proxy_agent_with_extra_ca_certs(
    intercepting: Intercepting, node_client: Path
) -> None:
    trust = {"NODE_EXTRA_CA_CERTS": str(intercepting.ca_file)}
    result = await _node(node_client, "proxy", intercepting.proxy, f"https://{HOST}", "4", **trust)
    assert result["authorization"].startswith("Bearer "), result
    assert result["up"] == result["down"]

    refused = await _node(
        node_client, "proxy", intercepting.proxy, "https://example.org", "1", **trust
    )
    assert "403" in refused["error"]


@pytest.mark.parametrize("mode", ["proxy", "env"])
async def test_http_url_through_undici_agents(
    intercepting: Intercepting, node_client: Path, mode: str
) -> None:
    # No CA at all: plain HTTP inside the CONNECT tunnel needs none.
    args = ("proxy", intercepting.proxy) if mode == "proxy" else ("env",)
    result = await _node(
        node_client, *args, f"http://{HOST}", "4", HTTP_PROXY=intercepting.proxy
    )
    assert result["authorization"].startswith("Bearer "), result
    assert result["up"] == result["down"]


async def test_without_the_ca_the_handshake_fails(
    intercepting: Intercepting, node_client: Path
) -> None:
    with capture_logs() as logs:
        result = await _node(node_client, "proxy", intercepting.proxy, f"https://{HOST}", "1")
    assert "SELF_SIGNED_CERT_IN_CHAIN" in result["error"] or "certificate" in result["error"]
    warnings = [e for e in logs if e["event"] == "interception_handshake_failed"]
    assert [w["host"] for w in warnings] == [HOST]
