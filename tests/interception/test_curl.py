"""curl through the sidecar with ``--proxy`` and ``--cacert``: CONNECT api.moex.com:443 is
intercepted, the token attached, 20 MiB go up and come back identical."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from structlog.testing import capture_logs

from sidecar.sandbox.servers import SandboxStack
from tests.interception.conftest import HOST, MIB, Intercepting, run


async def test_token_is_attached_inside_the_tunnel(
    intercepting: Intercepting, sandbox: SandboxStack
) -> None:
    done = await run(
        "curl", "-sS", "--proxy", intercepting.proxy, "--cacert", str(intercepting.ca_file),
        f"https://{HOST}/ntb/api/v1/contracts?x=1",
    )
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    assert report["path"] == "/ntb/api/v1/contracts"
    assert report["headers"]["authorization"].startswith("Bearer ")
    assert sandbox.ntb.seen_tokens


async def test_20_mib_both_ways(intercepting: Intercepting, tmp_path: Path) -> None:
    data = os.urandom(20 * MIB)
    upload = tmp_path / "up.bin"
    upload.write_bytes(data)
    done = await run(
        "curl", "-sS", "--fail", "--proxy", intercepting.proxy,
        "--cacert", str(intercepting.ca_file), "--data-binary", f"@{upload}",
        "-H", "Content-Type: application/octet-stream", "-o", str(tmp_path / "down.bin"),
        f"https://{HOST}/ntb/echo?echo=1",
    )
    assert done.returncode == 0, done.stderr.decode()
    down = (tmp_path / "down.bin").read_bytes()
    assert hashlib.sha256(down).hexdigest() == hashlib.sha256(data).hexdigest()


async def test_unknown_host_is_refused(intercepting: Intercepting) -> None:
    done = await run(
        "curl", "-sS", "--proxy", intercepting.proxy, "--cacert", str(intercepting.ca_file),
        "https://example.org/",
    )
    assert done.returncode != 0
    assert b"403" in done.stderr


async def test_without_the_ca_the_handshake_fails_with_one_warning(
    intercepting: Intercepting,
) -> None:
    with capture_logs() as logs:
        done = await run("curl", "-sS", "--proxy", intercepting.proxy, f"https://{HOST}/ntb")
    assert done.returncode == 60, done.stderr.decode()  # curl: peer certificate not trusted
    warnings = [e for e in logs if e["event"] == "interception_handshake_failed"]
    assert len(warnings) == 1
    assert warnings[0]["host"] == HOST and "sidecar ca export" in warnings[0]["fix"]
    metrics = intercepting.sidecar.metrics
    failures = metrics.registry.get_sample_value(
        "sidecar_interception_handshake_failures_total", {"upstream": "moex-ntb"}
    )
    assert failures == 1
