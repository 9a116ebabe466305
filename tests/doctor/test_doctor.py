"""``sidecar doctor`` against the sandbox (real TLS, mutual TLS, a real IdP emulator), with
each fault injected: every failure names its step and the fix, and the exit code says so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sidecar.config import validate_config
from sidecar.doctor import Step, diagnose, run_doctor
from sidecar.doctor.report import as_table
from sidecar.sandbox.pki import Pki
from sidecar.sandbox.servers import SandboxStack, TlsServer
from tests.helpers.sidecars import deep_merge


def config_of(data: dict[str, Any], **upstream: Any) -> Any:
    data = deep_merge(data, {"upstreams": {"moex-ntb": upstream}} if upstream else {})
    return validate_config(data)


def by_step(steps: list[Step]) -> dict[str, Step]:
    """The last step of each kind (the IdP's, when both endpoints have one)."""
    return {s.step: s for s in steps}


def failures(steps: list[Step]) -> dict[str, Step]:
    return {s.step: s for s in steps if s.status == "fail"}


@pytest.mark.ntb_mtls  # the sandbox NTB API asks for the client certificate
async def test_all_steps_pass_and_nothing_secret_is_printed(
    sidecar_config: dict[str, Any], sandbox: SandboxStack, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_of(sidecar_config)
    code = await run_doctor(config, upstream=None, probe="/ntb/echo", as_json=True)
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(out)
    assert report["ok"] is True
    steps = {s["step"]: s for s in report["upstreams"]["moex-ntb"]["steps"]}
    assert {"dns", "tcp", "tls", "client_cert", "clock", "token_endpoint", "login",
            "probe"} <= set(steps)
    assert all(s["status"] in ("ok", "skip") for s in report["upstreams"]["moex-ntb"]["steps"])
    assert "TLSv1" in steps["tls"]["detail"]
    assert "CN=sidecar" in steps["client_cert"]["detail"]
    assert "refresh token: yes" in steps["login"]["detail"]
    assert steps["probe"]["detail"].startswith("HTTP 200")
    for password in sandbox.idp.users.values():
        assert password not in out
    for token in sandbox.ntb.seen_tokens:
        assert token not in out
    assert len(sandbox.ntb.seen_tokens) == 1  # one login, one probe


async def test_idp_down(sidecar_config: dict[str, Any], sandbox: SandboxStack) -> None:
    await sandbox.idp_server.stop()
    steps = await diagnose(config_of(sidecar_config))
    failed = failures(steps)
    assert list(failed) == ["tcp"]
    assert failed["tcp"].where == f"127.0.0.1:{sandbox.idp_server.port}"
    assert "Connection refused" in failed["tcp"].detail or "refused" in failed["tcp"].detail
    assert "is the service up" in failed["tcp"].fix
    assert by_step(steps)["login"].status == "skip"


async def test_wrong_password(sidecar_config: dict[str, Any], tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-the-password-77\n")
    steps = await diagnose(config_of(sidecar_config, auth={"password_file": str(wrong)}))
    failed = failures(steps)
    assert list(failed) == ["login"]
    assert failed["login"].detail.startswith("refused:")
    assert "check username, password" in failed["login"].fix
    assert "not-the-password-77" not in as_table(steps)


async def test_untrusted_ca(sidecar_config: dict[str, Any], tmp_path: Path) -> None:
    stranger = Pki(tmp_path / "other-ca", name="some other CA")
    steps = await diagnose(config_of(sidecar_config, tls={"ca_file": str(stranger.ca_file)}))
    failed = failures(steps)
    assert set(failed) == {"tls"}
    assert "is not trusted by ca_file" in failed["tls"].detail
    assert "authsidecar sandbox CA" in failed["tls"].detail  # the issuer to trust
    assert "upstreams.moex-ntb.tls.ca_file" in failed["tls"].fix
    assert by_step(steps)["login"].status == "skip"


@pytest.mark.ntb_mtls  # the sandbox NTB API asks for the client certificate
async def test_client_cert_refused(sidecar_config: dict[str, Any], tmp_path: Path) -> None:
    stranger = Pki(tmp_path / "other-ca", name="some other CA").issue_client("stranger")
    tls = {"cert_file": str(stranger.cert_file), "key_file": str(stranger.key_file)}
    steps = await diagnose(config_of(sidecar_config, tls=tls))
    failed = failures(steps)
    assert list(failed) == ["client_cert"]
    assert "refused CN=stranger" in failed["client_cert"].detail
    assert failed["client_cert"].where.startswith("127.0.0.1:")
    assert by_step(steps)["login"].status == "ok"  # the IdP does not ask for one


@pytest.mark.ntb_mtls  # the sandbox NTB API asks for the client certificate
async def test_expired_client_cert(sidecar_config: dict[str, Any], sandbox: SandboxStack) -> None:
    expired = sandbox.pki.issue_client("expired", "sidecar", valid_days=-0.001)
    tls = {"cert_file": str(expired.cert_file), "key_file": str(expired.key_file)}
    steps = await diagnose(config_of(sidecar_config, tls=tls))
    failed = failures(steps)
    assert list(failed) == ["client_cert"]
    assert "expired on" in failed["client_cert"].detail
    assert "renew" in failed["client_cert"].fix


async def test_wrong_host_name(sidecar_config: dict[str, Any], sandbox: SandboxStack) -> None:
    cert = sandbox.pki.issue_server("elsewhere", ("api.elsewhere.example",))
    server = TlsServer(web.Application(), sandbox.pki.server_ssl_context(cert))
    await server.start()
    try:
        steps = await diagnose(config_of(sidecar_config, target=server.url))
    finally:
        await server.stop()
    failed = failures(steps)
    assert list(failed) == ["tls"]
    assert "is for api.elsewhere.example, not 127.0.0.1" in failed["tls"].detail


async def test_table_and_exit_code(
    sidecar_config: dict[str, Any], sandbox: SandboxStack, capsys: pytest.CaptureFixture[str]
) -> None:
    await sandbox.idp_server.stop()
    code = await run_doctor(config_of(sidecar_config), upstream="moex-ntb", probe=None,
                            as_json=False)
    out = capsys.readouterr().out
    assert code == 1
    assert out.splitlines()[0].split() == ["UPSTREAM", "STEP", "WHERE", "RESULT", "DETAIL"]
    assert "FAIL" in out and "fix: is the service up" in out
    assert out.rstrip().endswith("1 step(s) failed: moex-ntb")
