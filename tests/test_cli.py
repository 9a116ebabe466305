"""The commands a user runs: `sidecar sandbox` (what `make run` starts) and `sidecar run`."""

from __future__ import annotations

import asyncio
import json
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers.running import Running, cli_env


@pytest.fixture
def sandbox_process(tmp_path: Path) -> Iterator[Running]:
    running = Running(
        ["sandbox", "--dir", str(tmp_path / "sb"), "--proxy-port", "0", "--admin-port", "0",
         "--idp-port", "0", "--api-port", "0", "--kisc-port", "0",
         "--passport-port", "0", "--registration-port", "0", "--mpt-port", "0",
         "--xtrace-port", "0"],
        tmp_path,
    )
    try:
        yield running
    finally:
        if running.proc.poll() is None:
            running.stop()


def test_sandbox_prints_a_curl_line_that_works(sandbox_process: Running, tmp_path: Path) -> None:
    line = sandbox_process.wait_for(r"^\s+(curl -x http://127\.0\.0\.1:\d+ http://\S+/ntb/\S+)$")
    result = subprocess.run(
        [*shlex.split(line.group(1)), "-sS", "--max-time", "20"],
        capture_output=True, env=cli_env(), timeout=30,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["headers"]["authorization"].startswith("Bearer ")
    # MOEX asks no client certificate for NTB, and neither does the sandbox by default.
    assert seen["client_cert"] is None
    # The config it wrote is a valid config a user can start from.
    written = tmp_path / "sb" / "sidecar.yaml"
    check = subprocess.run(
        [sys.executable, "-m", "sidecar", "check", "--config", str(written)],
        capture_output=True, text=True, env=cli_env(), timeout=30,
    )
    assert check.returncode == 0, check.stderr
    assert "moex-ntb" in check.stdout
    assert sandbox_process.stop() == 0


def test_run_serves_with_written_config_and_stops_on_sigterm(
    sandbox_process: Running, tmp_path: Path
) -> None:
    """A second sidecar started by `sidecar run` from the sandbox's own config file."""
    sandbox_process.wait_for(r"curl -x")
    # The sandbox listens on ephemeral ports (":0"), so the copy gets its own ports too.
    mine = tmp_path / "mine.yaml"
    mine.write_text((tmp_path / "sb" / "sidecar.yaml").read_text())
    running = Running(["run", "--config", str(mine)], tmp_path)
    try:
        started = running.wait_for(r'"event": "started"')
        proxy = json.loads(started.string)["proxy"]
        # Which hot path runs (README, Compiled hot path), as `sidecar --version` says it.
        assert json.loads(started.string)["hot_path"].startswith(("compiled (", "pure Python"))
        running.wait_for(r'"event": "token_obtained"')
        result = subprocess.run(
            ["curl", "-sS", "-x", f"http://{proxy}", "http://api.moex.com/ntb/from-run"],
            capture_output=True, env=cli_env(), timeout=30,
        )
        assert json.loads(result.stdout)["path"] == "/ntb/from-run"
        password = (tmp_path / "sb" / "secrets" / "ntb-password").read_text().strip()
    finally:
        code = running.stop()
    assert code == 0
    output = "".join(running.lines) + (running.proc.stdout.read() if running.proc.stdout else "")
    assert '"event": "stopped"' in output
    assert password not in output


def test_example_configs_are_valid(tmp_path: Path) -> None:
    """config/*.yaml use the contract's field names; secrets and certificates come from env."""
    repo = Path(__file__).resolve().parents[1]
    secret = tmp_path / "password"
    secret.write_text("x")
    env = cli_env() | {"SIDECAR_UPSTREAMS__MOEX_NTB__AUTH__PASSWORD_FILE": str(secret)}
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "check", "--config", str(repo / "config/moex-ntb.yaml")],
        capture_output=True, text=True, env=env, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "password_file" not in result.stdout and "password: '***'" in result.stdout


def test_sandbox_example_matches_what_the_sandbox_writes(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    running = Running(
        ["sandbox", "--dir", ".sandbox", "--proxy-port", "0", "--admin-port", "0",
         "--idp-port", "0", "--api-port", "0", "--kisc-port", "0",
         "--passport-port", "0", "--registration-port", "0", "--mpt-port", "0",
         "--xtrace-port", "0"],
        tmp_path,
    )
    try:
        running.wait_for(r"curl -x")
        written = (tmp_path / ".sandbox" / "sidecar.yaml").read_text()
        result = subprocess.run(
            [sys.executable, "-m", "sidecar", "check", "--config",
             str(repo / "config/sandbox.yaml")],
            capture_output=True, text=True, env=cli_env(), timeout=30, cwd=tmp_path,
        )
    finally:
        running.stop()
    assert result.returncode == 0, result.stderr
    for path in ("pki/ca.crt", "secrets/ntb-password",
                 "pki/kisc-client-bank-user.p12", "secrets/kisc-p12-password",
                 "secrets/kisc-consumer-secret", "secrets/kisc-password",
                 "pki/moex-signer.crt", "secrets/moex-client-secret",
                 "secrets/moex-passport-password", "pki/mpt-signer.key",
                 "secrets/xtrace-password"):
        assert path in written


def test_kisc_example_is_valid(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.serialization import pkcs12

    from sidecar.sandbox.pki import Pki

    repo = Path(__file__).resolve().parents[1]
    pki = Pki(tmp_path / "pki")
    client = pki.issue_client("kisc", "bank-user")
    secret = tmp_path / "secret"
    secret.write_text(client.p12_password)
    assert pkcs12.load_key_and_certificates(
        client.p12_file.read_bytes(), client.p12_password.encode()
    )[0] is not None
    prefix = "SIDECAR_UPSTREAMS__KISC__"
    env = cli_env() | {
        f"{prefix}TLS__CA_FILE": str(pki.ca_file),
        f"{prefix}TLS__P12_FILE": str(client.p12_file),
        f"{prefix}TLS__P12_PASSWORD_FILE": str(secret),
        f"{prefix}AUTH__CONSUMER_SECRET_FILE": str(secret),
        f"{prefix}AUTH__PASSWORD_FILE": str(secret),
    }
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "check", "--config", str(repo / "config/kisc.yaml")],
        capture_output=True, text=True, env=env, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "wso2_password" in result.stdout and client.p12_password not in result.stdout


def test_mpt_example_is_valid(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("x")
    repo = Path(__file__).resolve().parents[1]
    prefix = "SIDECAR_UPSTREAMS__MPT__AUTH__SIGNER__NCANODE__"
    env = cli_env() | {f"{prefix}P12_FILE": str(secret), f"{prefix}P12_PASSWORD_FILE": str(secret)}
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "check", "--config", str(repo / "config/mpt.yaml")],
        capture_output=True, text=True, env=env, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "mpt_signin" in result.stdout and "p12_password: '***'" in result.stdout


def test_moex_passport_example_is_valid(tmp_path: Path) -> None:
    from sidecar.sandbox.pki import Pki

    client = Pki(tmp_path / "pki").issue_client("signer", "you")
    secret = tmp_path / "secret"
    secret.write_text(client.p12_password)
    repo = Path(__file__).resolve().parents[1]
    prefix = "SIDECAR_UPSTREAMS__MOEX_REGISTRATION__AUTH__"
    env = cli_env() | {
        f"{prefix}CLIENT_SECRET_FILE": str(secret),
        f"{prefix}PASSWORD_FILE": str(secret),
        f"{prefix}SIGNER__P12_FILE": str(client.p12_file),
        f"{prefix}SIGNER__P12_PASSWORD_FILE": str(secret),
    }
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "check", "--config",
         str(repo / "config/moex-passport.yaml")],
        capture_output=True, text=True, env=env, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "moex_passport" in result.stdout and client.p12_password not in result.stdout


async def test_doctor_command(sidecar_config: dict[str, Any], tmp_path: Path) -> None:
    """`sidecar doctor` as a user runs it, against the running sandbox: JSON, exit 0; an
    unknown upstream is a usage error."""
    config = tmp_path / "sidecar.yaml"
    config.write_text(yaml.safe_dump(sidecar_config))

    async def doctor(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sidecar", "doctor", "--config", str(config), *args,
            env=cli_env(), cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await doctor("--json", "--probe", "/ntb/echo")
    assert code == 0, out + err
    report = json.loads(out)
    assert report["ok"] is True and list(report["upstreams"]) == ["moex-ntb"]
    code, out, err = await doctor("--upstream", "nope")
    assert code == 2 and "no upstream 'nope'; the config has: moex-ntb" in err
