"""Python ``requests`` in its own process, the ecosystem's way: ``HTTPS_PROXY`` and
``REQUESTS_CA_BUNDLE`` in the environment, nothing in the code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from structlog.testing import capture_logs

from tests.interception.conftest import HOST, Intercepting, client_env, run

_CLIENT = """
import hashlib, json, os, sys
import requests

url = sys.argv[1]
out = {}
try:
    report = requests.get(url + "/ntb/report", timeout=30).json()
    out["authorization"] = report["headers"].get("authorization", "")
    data = os.urandom(20 * 1024 * 1024)
    echoed = requests.post(url + "/ntb/echo?echo=1", data=data, timeout=60).content
    out["up"] = hashlib.sha256(data).hexdigest()
    out["down"] = hashlib.sha256(echoed).hexdigest()
except requests.exceptions.SSLError as exc:
    out["ssl_error"] = str(exc)
except requests.exceptions.ProxyError as exc:
    out["proxy_error"] = str(exc)
print(json.dumps(out))
"""


async def _requests(url: str, ca_file: Path | None, proxy: str) -> dict[str, str]:
    env = client_env(HTTPS_PROXY=proxy)
    if ca_file is not None:
        env["REQUESTS_CA_BUNDLE"] = str(ca_file)
    done = await run(sys.executable, "-c", _CLIENT, url, env=env)
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, str] = json.loads(done.stdout)
    return result


async def test_token_and_20_mib_both_ways(intercepting: Intercepting) -> None:
    result = await _requests(f"https://{HOST}", intercepting.ca_file, intercepting.proxy)
    assert result["authorization"].startswith("Bearer ")
    assert result["up"] == result["down"]


async def test_unknown_host_is_refused(intercepting: Intercepting) -> None:
    result = await _requests("https://example.org", intercepting.ca_file, intercepting.proxy)
    assert "403" in result["proxy_error"]


async def test_without_the_ca_the_handshake_fails(intercepting: Intercepting) -> None:
    with capture_logs() as logs:
        result = await _requests(f"https://{HOST}", None, intercepting.proxy)
    assert "CERTIFICATE_VERIFY_FAILED" in result["ssl_error"]
    warnings = [e for e in logs if e["event"] == "interception_handshake_failed"]
    assert [w["host"] for w in warnings] == [HOST]
