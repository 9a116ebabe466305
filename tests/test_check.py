"""``sidecar check`` refuses what ``sidecar run`` would refuse, with every problem in one round.

Each case below passed ``check`` once and then made ``run`` exit 2 (or would route traffic
wrongly); the material is real (the sandbox PKI), the configs are loaded as a user's are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.check import Report, check_config
from sidecar.config import ConfigError, load_config
from sidecar.sandbox.pki import IssuedCert, Pki
from tests.helpers.cli import run_sidecar

PASSWORD = "pw-never-printed-4b1c"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def client(pki: Pki) -> IssuedCert:
    return pki.issue_client("client")


@pytest.fixture(scope="module")
def other(pki: Pki) -> IssuedCert:
    return pki.issue_client("other")


def upstream(**extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "match": ["api.example.com"],
        "target": "https://api.example.com",
        "auth": {
            "type": "oidc_password",
            "token_url": "https://idp.example.com/token",
            "client_id": "app",
            "username": "trader",
            "password": PASSWORD,
        },
    }
    data.update(extra)
    return data


def write_config(tmp_path: Path, data: dict[str, Any], name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def checked(tmp_path: Path, data: dict[str, Any], env: dict[str, str] | None = None) -> Report:
    return check_config(load_config(write_config(tmp_path, data), env or {}))


def errors(report: Report) -> dict[str, str]:
    return {p.path: p.message for p in report.errors}


def warnings(report: Report) -> dict[str, str]:
    return {p.path: p.message for p in report.warnings}


def test_good_material_passes(tmp_path: Path, pki: Pki, client: IssuedCert) -> None:
    tls = {"ca_file": str(pki.ca_file), "cert_file": str(client.cert_file),
           "key_file": str(client.key_file)}
    report = checked(tmp_path, {"upstreams": {"api": upstream(tls=tls)}})
    assert report.ok and report.warnings == []


def test_wrong_p12_password(tmp_path: Path, client: IssuedCert) -> None:
    tls = {"p12_file": str(client.p12_file), "p12_password": "not-the-password"}
    found = errors(checked(tmp_path, {"upstreams": {"api": upstream(tls=tls)}}))
    assert "wrong p12_password" in found["upstreams.api.tls.p12_file"]
    assert "not-the-password" not in json.dumps(found)


def test_client_cert_and_key_that_do_not_match(
    tmp_path: Path, client: IssuedCert, other: IssuedCert
) -> None:
    tls = {"cert_file": str(client.cert_file), "key_file": str(other.key_file)}
    found = errors(checked(tmp_path, {"upstreams": {"api": upstream(tls=tls)}}))
    assert "does not match the key" in found["upstreams.api.tls.cert_file"]


def test_key_given_as_cert_file(tmp_path: Path, client: IssuedCert) -> None:
    tls = {"cert_file": str(client.key_file), "key_file": str(client.cert_file)}
    found = errors(checked(tmp_path, {"upstreams": {"api": upstream(tls=tls)}}))
    assert "holds a private key, not a certificate" in found["upstreams.api.tls.cert_file"]
    assert "holds a certificate, not a private key" in found["upstreams.api.tls.key_file"]


def test_key_given_as_ca_file(tmp_path: Path, client: IssuedCert) -> None:
    tls = {"ca_file": str(client.key_file)}
    found = errors(checked(tmp_path, {"upstreams": {"api": upstream(tls=tls)}}))
    assert "holds a private key, not CA certificates" in found["upstreams.api.tls.ca_file"]


def test_pem_given_as_p12_file(tmp_path: Path, client: IssuedCert) -> None:
    tls = {"p12_file": str(client.cert_file), "p12_password": "x"}
    found = errors(checked(tmp_path, {"upstreams": {"api": upstream(tls=tls)}}))
    assert "is PEM text, not a PKCS#12 bundle" in found["upstreams.api.tls.p12_file"]


def test_signer_cert_that_does_not_match_its_key(
    tmp_path: Path, client: IssuedCert, other: IssuedCert
) -> None:
    auth = {
        "type": "mpt_signin",
        "base_url": "https://mpt.example.com/api/v3",
        "signer": {"type": "pkcs7", "cert_file": str(client.cert_file),
                   "key_file": str(other.key_file)},
    }
    found = errors(checked(tmp_path, {"upstreams": {"mpt": upstream(auth=auth)}}))
    assert "does not match the key" in found["upstreams.mpt.auth.signer.cert_file"]


def test_every_problem_in_one_round(tmp_path: Path, client: IssuedCert, other: IssuedCert) -> None:
    missing = tmp_path / "nowhere"
    bad_auth = dict(upstream()["auth"], type="oidc_password", client_secret_file=str(missing),
                    password_file=str(missing / "pw"))
    del bad_auth["password"]
    data = {"upstreams": {
        "a": upstream(tls={"cert_file": str(client.cert_file), "key_file": str(other.key_file)}),
        "b": upstream(match=["b.example.com"],
                      tls={"p12_file": str(client.p12_file), "p12_password": "wrong"}),
    }}
    assert set(errors(checked(tmp_path, data))) == {
        "upstreams.a.tls.cert_file", "upstreams.b.tls.p12_file",
    }
    # Two missing secret files of one block: both said at once.
    data["upstreams"]["c"] = upstream(match=["c.example.com"], auth=bad_auth)
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, data), {})
    paths = {line.split(":")[0] for line in caught.value.problems}
    assert paths == {"upstreams.c.auth.client_secret_file", "upstreams.c.auth.password_file"}


def test_warnings_empty_secret_placeholder_plain_http(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    auth = dict(upstream()["auth"], password_file=str(empty), client_id="YOUR_CLIENT_ID")
    del auth["password"]
    data = {"upstreams": {
        "api": upstream(auth=auth),
        "plain": upstream(match=["plain.example.com"], target="http://plain.example.com",
                          auth=dict(upstream()["auth"], password="CHANGE_ME")),
    }}
    report = checked(tmp_path, data)
    assert report.ok
    found = warnings(report)
    assert "is empty" in found["upstreams.api.auth.password_file"]
    assert "placeholder" in found["upstreams.api.auth.client_id"]
    assert "placeholder" in found["upstreams.plain.auth.password"]
    assert "plain http://" in found["upstreams.plain.target"]
    assert "CHANGE_ME" not in json.dumps(found) and "YOUR_CLIENT_ID" not in json.dumps(found)


def test_passthrough_host_an_upstream_matches(tmp_path: Path) -> None:
    data = {"upstreams": {"api": upstream()}, "passthrough": ["github.com", "API.example.com:443"]}
    found = errors(checked(tmp_path, data))
    assert list(found) == ["passthrough.1"]
    assert "no token" in found["passthrough.1"]


@pytest.mark.parametrize("second", [["api.example.com:8443"], ["API.EXAMPLE.COM."]])
def test_overlapping_match_entries(tmp_path: Path, second: list[str]) -> None:
    data = {"upstreams": {"a": upstream(), "b": upstream(match=second)}}
    try:
        report = checked(tmp_path, data)
    except ConfigError as exc:  # the same host twice: the models refuse it already
        assert "already matched by upstreams.a" in exc.problems[0]
        return
    assert "overlaps 'api.example.com' of upstreams.a" in errors(report)["upstreams.b.match"]


def test_tab_in_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("upstreams:\n  api:\n\tmatch: [a]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    assert caught.value.problems == [
        f"{path}: tab character at line 3, column 1: YAML indents with spaces"
    ]


def test_unknown_field_suggests_the_closest(tmp_path: Path) -> None:
    auth = dict(upstream()["auth"], pasword_file="/x")
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, {"upstreams": {"api": upstream(auth=auth)}}), {})
    assert "upstreams.api.auth.pasword_file: unknown field; did you mean `password_file`?" in (
        caught.value.problems
    )


def test_match_written_as_url(tmp_path: Path) -> None:
    data = {"upstreams": {"api": upstream(match=["https://api.example.com/v1"])}}
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, data), {})
    assert "write the host only ('api.example.com')" in caught.value.problems[0]


def test_env_override_error_names_the_variable(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"upstreams": {"moex-ntb": upstream()}})
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"SIDECAR_LISTEN__PROXY": "example.com:80",
                           "SIDECAR_UPSTREAMS__MOEX_NTB__TIMEOUTS__READ": "-1"})
    assert len(caught.value.problems) == 2
    assert any(line.startswith("listen.proxy:") and "(set by SIDECAR_LISTEN__PROXY)" in line
               for line in caught.value.problems)
    assert any(line.startswith("upstreams.moex-ntb.timeouts.read:")
               and "(set by SIDECAR_UPSTREAMS__MOEX_NTB__TIMEOUTS__READ)" in line
               for line in caught.value.problems)


def test_env_override_of_an_upstream_that_does_not_exist(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"upstreams": {"moex-ntb": upstream()}})
    with pytest.raises(ConfigError) as caught:
        load_config(path, {"SIDECAR_UPSTREAMS__MOEX_NBT__AUTH__PASSWORD": "secret-9"})
    assert caught.value.problems == [
        f"SIDECAR_UPSTREAMS__MOEX_NBT__AUTH__PASSWORD: names upstream 'moex_nbt', which "
        f"{path} does not define (its upstreams: moex-ntb); an upstream added by variables "
        "needs at least match, target and auth"
    ]


def test_expired_client_certificate_warns(tmp_path: Path, pki: Pki) -> None:
    expired = pki.issue_client("expired", valid_days=-0.001)  # expired 86 s ago
    tls = {"cert_file": str(expired.cert_file), "key_file": str(expired.key_file)}
    report = checked(tmp_path, {"upstreams": {"api": upstream(tls=tls)}})
    assert "expired on" in warnings(report)["upstreams.api.tls"]


def test_check_json_for_ci(tmp_path: Path, client: IssuedCert) -> None:
    data = {"upstreams": {"api": upstream(
        target="http://api.example.com",
        tls={"p12_file": str(client.p12_file), "p12_password": "wrong-pw"},
    )}}
    result = run_sidecar(tmp_path, "check", "--json", "--config", str(write_config(tmp_path, data)))
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert [e["path"] for e in report["errors"]] == ["upstreams.api.tls.p12_file"]
    assert [w["path"] for w in report["warnings"]] == ["upstreams.api.target"]
    assert "wrong-pw" not in result.stdout and PASSWORD not in result.stdout

    broken = tmp_path / "broken.yaml"
    broken.write_text("upstreams: {api: {match: [a], tagret: x}}\n")
    result = run_sidecar(tmp_path, "check", "--json", "--config", str(broken))
    assert result.returncode == 2
    report = json.loads(result.stdout)
    assert {"path": "upstreams.api.tagret",
            "message": "unknown field; did you mean `target`?"} in report["errors"]


def test_check_text_lists_build_errors_and_warnings(tmp_path: Path, client: IssuedCert) -> None:
    tls = {"cert_file": str(client.key_file), "key_file": str(client.key_file)}
    data = {"upstreams": {"api": upstream(tls=tls, target="http://api.example.com")}}
    result = run_sidecar(tmp_path, "check", "--config", str(write_config(tmp_path, data)))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == "config error:"
    assert lines[1].startswith("  upstreams.api.tls.cert_file: ")
    assert lines[2].startswith("warning: upstreams.api.target: plain http://")
