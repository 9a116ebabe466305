"""A Java 17 ``HttpClient`` through interception: ``-Dhttps.proxyHost/-Dhttps.proxyPort`` and a
truststore made with ``keytool`` from ``sidecar ca export``'s certificate."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.interception.conftest import HOST, Intercepting, run

SOURCE = Path(__file__).with_name("ProxyClient.java")


@pytest.fixture
async def java_client(tmp_path: Path) -> Path:
    assert shutil.which("javac") and shutil.which("keytool"), "a JDK 17 is needed (javac, keytool)"
    shutil.copy(SOURCE, tmp_path / SOURCE.name)
    done = await run("javac", "-d", str(tmp_path), str(tmp_path / SOURCE.name))
    assert done.returncode == 0, done.stderr.decode()
    return tmp_path


async def _java(classes: Path, proxy_port: int, url: str, *jvm: str) -> dict[str, str]:
    done = await run(
        "java", "-Dhttps.proxyHost=127.0.0.1", f"-Dhttps.proxyPort={proxy_port}", *jvm,
        "-cp", str(classes), "ProxyClient", url, "4",
    )
    assert done.returncode == 0, done.stderr.decode()
    lines = done.stdout.decode().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


async def test_java_with_a_keytool_truststore(
    intercepting: Intercepting, java_client: Path
) -> None:
    store = java_client / "trust.p12"
    done = await run(
        "keytool", "-importcert", "-noprompt", "-alias", "authsidecar",
        "-file", str(intercepting.ca_file), "-keystore", str(store),
        "-storetype", "PKCS12", "-storepass", "changeit",
    )
    assert done.returncode == 0, done.stderr.decode()
    trust = (f"-Djavax.net.ssl.trustStore={store}", "-Djavax.net.ssl.trustStorePassword=changeit")
    result = await _java(java_client, intercepting.port, f"https://{HOST}", *trust)
    assert result.get("status") == "200", result
    assert result["bearer"] == "true"
    assert result["up"] == result["down"]
    assert result["version"] == "HTTP_1_1"  # it asked for h2; only http/1.1 is offered

    refused = await _java(java_client, intercepting.port, "https://example.org", *trust)
    assert "403" in refused["error"]


async def test_java_without_the_ca_fails_its_handshake(
    intercepting: Intercepting, java_client: Path
) -> None:
    with capture_logs() as logs:
        result = await _java(java_client, intercepting.port, f"https://{HOST}")
    assert "SSLHandshakeException" in result["error"]
    warnings = [e for e in logs if e["event"] == "interception_handshake_failed"]
    assert [w["host"] for w in warnings] == [HOST]
