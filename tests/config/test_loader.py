"""The configuration contract (see the README), checked through load_config / validate_config."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from sidecar.config import ConfigError, load_config, redacted, validate_config
from tests.helpers.config_files import (
    ALL_SECRETS,
    CC_SECRET,
    CLIENT_SECRET,
    FILE_TOKEN,
    MINIMAL_YAML,
    P12_PASSWORD,
    PASSWORD,
    STATIC_TOKEN,
    UP,
    Files,
    base,
    full_yaml,
    make_files,
    upstream,
    write,
)


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return make_files(tmp_path / "secrets")


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    return info.value.problems


def load_problems(path: Path | None, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={} if environ is None else environ)
    return info.value.problems


def the_problem(problems: list[str], prefix: str) -> str:
    found = [p for p in problems if p.startswith(prefix)]
    assert found, f"no problem starting with {prefix!r} in {problems}"
    return found[0]


# --- valid configs --------------------------------------------------------------------------


def test_full_config_loads_every_field(tmp_path: Path, files: Files) -> None:
    config = load_config(write(tmp_path / "full.yaml", full_yaml(files)), environ={})

    assert config.listen.proxy == "127.0.0.1:18080"
    assert config.listen.admin == "127.0.0.1:19090"
    assert (config.log.level, config.log.format) == ("debug", "console")
    assert list(config.upstreams) == ["moex-ntb", "kisc", "static-api", "static-file"]
    assert config.passthrough == ["github.com", "pypi.org:443"]

    ntb = config.upstreams["moex-ntb"]
    assert ntb.match == ["api.moex.com", "api.moex.com:8443"]  # lower-cased
    assert ntb.target == "https://api.moex.com"  # trailing slash dropped
    assert (ntb.tls.ca_file, ntb.tls.cert_file, ntb.tls.key_file) == (
        files.ca,
        files.cert,
        files.key,
    )
    assert ntb.tls.p12_file is None and ntb.tls.verify is True
    assert ntb.tls.has_client_cert
    assert ntb.auth.type == "oidc_password"
    assert ntb.auth.token_url.endswith("/openid-connect/token")
    assert ntb.auth.client_id == "LK_NTB_PUBLIC"
    assert ntb.auth.username == "trader"
    assert ntb.auth.password.get_secret_value() == PASSWORD
    assert ntb.auth.client_secret.get_secret_value() == CLIENT_SECRET
    assert ntb.auth.scope == "openid"
    assert ntb.max_body == 65536
    assert ntb.replay_limit == 4096
    assert (ntb.timeouts.connect, ntb.timeouts.read, ntb.timeouts.token_wait) == (3, 30.5, 7)
    assert ntb.eager is False

    kisc = config.upstreams["kisc"]
    assert kisc.target == "https://api.kisc.kz/v1"
    assert kisc.tls.p12_file == files.p12
    assert kisc.tls.p12_password.get_secret_value() == P12_PASSWORD
    assert kisc.tls.verify is False
    assert kisc.tls.has_client_cert
    assert kisc.auth.type == "client_credentials"
    assert kisc.auth.client_id == "kisc-app"
    assert kisc.auth.client_secret.get_secret_value() == CC_SECRET

    static = config.upstreams["static-api"]
    assert static.auth.type == "static"
    assert static.auth.token.get_secret_value() == STATIC_TOKEN
    assert static.auth.token_file is None
    assert static.allow_plaintext is True

    from_file = config.upstreams["static-file"]
    assert from_file.auth.token is None
    assert from_file.auth.token_file == files.token  # kept as a path: re-read when it changes


def test_defaults_follow_design(tmp_path: Path) -> None:
    config = load_config(write(tmp_path / "min.yaml", MINIMAL_YAML), environ={})

    assert config.listen.proxy == "127.0.0.1:8080"
    assert config.listen.admin == "0.0.0.0:9090"
    assert (config.log.level, config.log.format) == ("info", "json")
    assert config.passthrough == []
    ntb = config.upstreams["moex-ntb"]
    assert ntb.replay_limit == 1048576
    assert ntb.max_body is None
    assert (ntb.timeouts.connect, ntb.timeouts.read, ntb.timeouts.token_wait) == (10, 60, 10)
    assert ntb.eager is True
    assert ntb.tls.verify is True
    assert ntb.tls.ca_file is None and not ntb.tls.has_client_cert
    assert ntb.auth.scope == "openid email profile"
    assert ntb.auth.client_secret is None
    assert ntb.auth.tls is None


def test_oidc_password_auth() -> None:
    config = validate_config(base())
    auth = config.upstreams["moex-ntb"].auth
    assert auth.type == "oidc_password"
    assert isinstance(auth.password, SecretStr)
    assert auth.password.get_secret_value() == "plain-password-1d2e"
    assert "plain-password-1d2e" not in repr(auth)


def test_client_credentials_auth() -> None:
    data = base()
    upstream(data)["auth"] = {
        "type": "client_credentials",
        "token_url": "https://idp.example.com/token",
        "client_id": "app",
        "client_secret": "cc-1",
    }
    auth = validate_config(data).upstreams["moex-ntb"].auth
    assert auth.type == "client_credentials"
    assert auth.client_secret.get_secret_value() == "cc-1"
    assert auth.scope is None


def test_static_auth_with_token() -> None:
    data = base()
    upstream(data)["auth"] = {"type": "static", "token": "tok-1"}
    auth = validate_config(data).upstreams["moex-ntb"].auth
    assert auth.type == "static"
    assert auth.token.get_secret_value() == "tok-1"


def test_static_auth_with_token_file(files: Files) -> None:
    data = base()
    upstream(data)["auth"] = {"type": "static", "token_file": str(files.token)}
    auth = validate_config(data).upstreams["moex-ntb"].auth
    assert auth.token is None
    assert auth.token_file == files.token


def test_auth_has_its_own_tls_block(files: Files) -> None:
    data = base()
    upstream(data)["auth"]["tls"] = {"cert_file": str(files.cert), "key_file": str(files.key)}
    config = validate_config(data)
    assert config.upstreams["moex-ntb"].auth.tls.cert_file == files.cert
    assert not config.upstreams["moex-ntb"].tls.has_client_cert


@pytest.mark.parametrize(
    "address", ["127.0.0.1:0", "0.0.0.0:65535", "localhost:8080", "[::1]:8080", "[::]:9090"]
)
def test_listen_addresses_accepted(address: str) -> None:
    data = base()
    data["listen"] = {"proxy": address, "admin": address}
    assert validate_config(data).listen.proxy == address


# --- secret files ---------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
def test_password_file_is_read_and_newline_stripped(tmp_path: Path, ending: str) -> None:
    secret = write(tmp_path / "pw", "  pass word with spaces 9" + ending)
    data = base()
    del upstream(data)["auth"]["password"]
    upstream(data)["auth"]["password_file"] = str(secret)
    auth = validate_config(data).upstreams["moex-ntb"].auth
    assert auth.password.get_secret_value() == "  pass word with spaces 9"


def test_client_secret_file_is_read(tmp_path: Path) -> None:
    secret = write(tmp_path / "cs", "cs-value-1\n")
    data = base()
    upstream(data)["auth"] = {
        "type": "client_credentials",
        "token_url": "https://idp.example.com/token",
        "client_id": "app",
        "client_secret_file": str(secret),
    }
    auth = validate_config(data).upstreams["moex-ntb"].auth
    assert auth.client_secret.get_secret_value() == "cs-value-1"


def test_oidc_client_secret_file_is_read(tmp_path: Path) -> None:
    secret = write(tmp_path / "cs", "oidc-cs-2\n")
    data = base()
    upstream(data)["auth"]["client_secret_file"] = str(secret)
    auth = validate_config(data).upstreams["moex-ntb"].auth
    assert auth.client_secret.get_secret_value() == "oidc-cs-2"


def test_p12_password_file_is_read(files: Files) -> None:
    data = base()
    upstream(data)["tls"] = {
        "p12_file": str(files.p12),
        "p12_password_file": str(files.p12_password),
    }
    tls = validate_config(data).upstreams["moex-ntb"].tls
    assert tls.p12_password.get_secret_value() == P12_PASSWORD


@pytest.mark.parametrize(
    ("where", "field"),
    [("auth", "password"), ("auth", "client_secret"), ("tls", "p12_password")],
)
def test_secret_and_secret_file_together_is_an_error(files: Files, where: str, field: str) -> None:
    data = base()
    block = upstream(data).setdefault(where, {})
    if where == "tls":
        block["p12_file"] = str(files.p12)
    block[field] = "inline-value-4c"
    block[f"{field}_file"] = str(files.password)
    problems = problems_of(data)
    line = the_problem(problems, f"{UP}.{where}: ")
    assert f"give either {field} or {field}_file, not both" in line
    assert "inline-value-4c" not in "\n".join(problems)
    assert PASSWORD not in "\n".join(problems)


@pytest.mark.parametrize(
    ("where", "field"),
    [("auth", "password"), ("auth", "client_secret"), ("tls", "p12_password")],
)
def test_missing_secret_file_names_field_and_file(tmp_path: Path, where: str, field: str) -> None:
    missing = tmp_path / "no" / f"{field}.txt"
    data = base()
    if where == "auth":
        del upstream(data)["auth"]["password"]
    upstream(data).setdefault(where, {})[f"{field}_file"] = str(missing)
    problems = problems_of(data)
    assert f"{UP}.{where}.{field}_file: file not found: {missing}" in problems


# --- environment overrides ------------------------------------------------------------------


def test_env_overrides_scalar(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL_YAML)
    config = load_config(path, environ={"SIDECAR_LISTEN__PROXY": "127.0.0.1:7000"})
    assert config.listen.proxy == "127.0.0.1:7000"
    assert config.listen.admin == "0.0.0.0:9090"


def test_env_reaches_dashed_upstream_name(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL_YAML)
    config = load_config(path, environ={"SIDECAR_UPSTREAMS__MOEX_NTB__AUTH__USERNAME": "alice"})
    assert list(config.upstreams) == ["moex-ntb"]  # no second "moex_ntb" upstream appeared
    assert config.upstreams["moex-ntb"].auth.username == "alice"
    assert config.upstreams["moex-ntb"].auth.password.get_secret_value() == "plain-password-1d2e"


def test_env_list_in_flow_syntax(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL_YAML)
    environ = {
        "SIDECAR_UPSTREAMS__MOEX_NTB__MATCH": "[a.example.com, B.example.com:8443]",
        "SIDECAR_PASSTHROUGH": "[github.com]",
    }
    config = load_config(path, environ=environ)
    assert config.upstreams["moex-ntb"].match == ["a.example.com", "b.example.com:8443"]
    assert config.passthrough == ["github.com"]


@pytest.mark.parametrize("value", ["012345", "1e3", "true", "null", "0x1F"])
def test_env_numeric_looking_password_stays_a_string(tmp_path: Path, value: str) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL_YAML)
    config = load_config(path, environ={"SIDECAR_UPSTREAMS__MOEX_NTB__AUTH__PASSWORD": value})
    password = config.upstreams["moex-ntb"].auth.password
    assert isinstance(password, SecretStr)
    assert password.get_secret_value() == value


def test_env_beats_yaml(tmp_path: Path) -> None:
    text = MINIMAL_YAML + "log: {level: warning, format: json}\nlisten: {proxy: 127.0.0.1:1}\n"
    path = write(tmp_path / "c.yaml", text)
    environ = {
        "SIDECAR_LOG__LEVEL": "debug",
        "SIDECAR_LISTEN__PROXY": "127.0.0.1:2",
        "SIDECAR_UPSTREAMS__MOEX_NTB__TARGET": "https://other.example.com",
        "SIDECAR_UPSTREAMS__MOEX_NTB__REPLAY_LIMIT": "2048",
        "SIDECAR_UPSTREAMS__MOEX_NTB__EAGER": "false",
        "SIDECAR_UPSTREAMS__MOEX_NTB__TIMEOUTS__READ": "5.5",
    }
    config = load_config(path, environ=environ)
    assert config.log.level == "debug"
    assert config.log.format == "json"  # untouched sibling of the overridden field
    assert config.listen.proxy == "127.0.0.1:2"
    ntb = config.upstreams["moex-ntb"]
    assert ntb.target == "https://other.example.com"
    assert ntb.replay_limit == 2048
    assert ntb.eager is False
    assert ntb.timeouts.read == 5.5
    assert ntb.timeouts.connect == 10


def test_env_secret_file_override(tmp_path: Path) -> None:
    text = MINIMAL_YAML.replace("      password: plain-password-1d2e\n", "")
    path = write(tmp_path / "c.yaml", text)
    secret = write(tmp_path / "pw", "from-env-file-3\n")
    environ = {"SIDECAR_UPSTREAMS__MOEX_NTB__AUTH__PASSWORD_FILE": str(secret)}
    config = load_config(path, environ=environ)
    assert config.upstreams["moex-ntb"].auth.password.get_secret_value() == "from-env-file-3"


def test_env_can_add_an_upstream(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL_YAML)
    environ = {
        "SIDECAR_UPSTREAMS__EXTRA__MATCH": "[extra.example.com]",
        "SIDECAR_UPSTREAMS__EXTRA__TARGET": "https://extra.example.com",
        "SIDECAR_UPSTREAMS__EXTRA__AUTH": "{type: static, token: t-5}",
    }
    config = load_config(path, environ=environ)
    assert set(config.upstreams) == {"moex-ntb", "extra"}
    assert config.upstreams["extra"].auth.token.get_secret_value() == "t-5"


def test_env_map_replaces_the_file_block(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL_YAML)
    config = load_config(path, {"SIDECAR_UPSTREAMS__MOEX_NTB__AUTH": "{type: static, token: t-6}"})
    auth = config.upstreams["moex-ntb"].auth
    assert auth.type == "static" and auth.token.get_secret_value() == "t-6"


def test_env_key_matches_a_dashed_key_in_the_file(tmp_path: Path) -> None:
    text = MINIMAL_YAML + "    headers: {X-Api-Version: '1'}\n"
    path = write(tmp_path / "c.yaml", text)
    config = load_config(path, {"SIDECAR_UPSTREAMS__MOEX_NTB__HEADERS__X_API_VERSION": "2"})
    assert config.upstreams["moex-ntb"].headers == {"X-Api-Version": "2"}


def test_env_unknown_section_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL_YAML)
    [problem] = load_problems(path, {"SIDECAR_LISTN__PROXY": "127.0.0.1:1"})
    assert problem.startswith("listn: unknown field")


@pytest.mark.parametrize("name", ["SIDECAR_PURE_PYTHON", "SIDECAR_NO_COMPILE"])
def test_env_hot_path_switches_are_not_config_fields(tmp_path: Path, name: str) -> None:
    # Process and build switches (README, Compiled hot path), not overrides of the file.
    path = write(tmp_path / "c.yaml", MINIMAL_YAML)
    config = load_config(path, environ={name: "1"})
    assert config.listen.proxy == "127.0.0.1:8080"


def test_env_prefix_is_upper_case(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL_YAML)
    config = load_config(path, environ={"sidecar_listen__proxy": "127.0.0.1:7000"})
    assert config.listen.proxy == "127.0.0.1:8080"


def test_env_bad_value_reports_field_path(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL_YAML)
    problems = load_problems(path, {"SIDECAR_UPSTREAMS__MOEX_NTB__AUTH__TOKEN_URL": "nope"})
    assert the_problem(problems, f"{UP}.auth.token_url: ").startswith(
        f"{UP}.auth.token_url: not a valid URL"
    )


def test_other_env_variables_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL_YAML)
    config = load_config(path, environ={"HOME": "/root", "LISTEN__PROXY": "bad", "SIDECAR": "x"})
    assert config.listen.proxy == "127.0.0.1:8080"


def test_sidecar_config_env_used_without_path(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL_YAML)
    config = load_config(None, environ={"SIDECAR_CONFIG": str(path)})
    assert list(config.upstreams) == ["moex-ntb"]


def test_sidecar_config_from_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL_YAML)
    monkeypatch.setenv("SIDECAR_CONFIG", str(path))
    monkeypatch.setenv("SIDECAR_LISTEN__ADMIN", "127.0.0.1:9191")
    config = load_config(None)
    assert config.listen.admin == "127.0.0.1:9191"


def test_explicit_path_wins_over_sidecar_config(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL_YAML)
    config = load_config(path, environ={"SIDECAR_CONFIG": str(tmp_path / "missing.yaml")})
    assert list(config.upstreams) == ["moex-ntb"]


# --- errors ---------------------------------------------------------------------------------


def test_bad_token_url() -> None:
    data = base()
    upstream(data)["auth"]["token_url"] = "sso.moex.com/token"
    problems = problems_of(data)
    assert len(problems) == 1
    assert problems[0].startswith(f"{UP}.auth.token_url: not a valid URL")
    assert "sso.moex.com/token" in problems[0]  # not a secret: shown to help the fix


@pytest.mark.parametrize("target", ["ftp://api.moex.com", "https://", "api.moex.com"])
def test_bad_target_url(target: str) -> None:
    data = base()
    upstream(data)["target"] = target
    assert the_problem(problems_of(data), f"{UP}.target: ").startswith(
        f"{UP}.target: not a valid URL"
    )


def test_target_with_query_is_an_error() -> None:
    data = base()
    upstream(data)["target"] = "https://api.moex.com/?a=1"
    line = the_problem(problems_of(data), f"{UP}.target: ")
    assert "no query or fragment" in line


@pytest.mark.parametrize(
    ("remove", "path"),
    [
        (("target",), f"{UP}.target"),
        (("match",), f"{UP}.match"),
        (("auth",), f"{UP}.auth"),
        (("auth", "username"), f"{UP}.auth.username"),
        (("auth", "password"), f"{UP}.auth.password"),
        (("auth", "client_id"), f"{UP}.auth.client_id"),
        (("auth", "token_url"), f"{UP}.auth.token_url"),
    ],
)
def test_missing_required_field(remove: tuple[str, ...], path: str) -> None:
    data = base()
    node = upstream(data)
    for key in remove[:-1]:
        node = node[key]
    del node[remove[-1]]
    assert problems_of(data) == [f"{path}: is required"]


def test_client_credentials_needs_client_secret() -> None:
    data = base()
    upstream(data)["auth"] = {
        "type": "client_credentials",
        "token_url": "https://idp.example.com/token",
        "client_id": "app",
    }
    assert problems_of(data) == [f"{UP}.auth.client_secret: is required"]


def test_unknown_field_typo() -> None:
    data = base()
    upstream(data)["tagret"] = upstream(data).pop("target")
    problems = problems_of(data)
    assert the_problem(problems, f"{UP}.tagret: ").startswith(f"{UP}.tagret: unknown field")
    assert f"{UP}.target: is required" in problems


@pytest.mark.parametrize(
    ("where", "typo", "path"),
    [
        ((), "listn", "listn"),
        (("listen",), "prxy", "listen.prxy"),
        (("upstreams", "moex-ntb", "auth"), "usernme", f"{UP}.auth.usernme"),
        (("upstreams", "moex-ntb", "tls"), "verfy", f"{UP}.tls.verfy"),
        (("upstreams", "moex-ntb", "timeouts"), "raed", f"{UP}.timeouts.raed"),
    ],
)
def test_unknown_field_anywhere(where: tuple[str, ...], typo: str, path: str) -> None:
    data = base()
    node = data
    for key in where:
        node = node.setdefault(key, {})
    node[typo] = "x"
    line = the_problem(problems_of(data), f"{path}: ")
    assert line.startswith(f"{path}: unknown field")


def test_unknown_auth_type_lists_valid_ones() -> None:
    data = base()
    upstream(data)["auth"]["type"] = "oidc"
    assert problems_of(data) == [
        f"{UP}.auth: unknown type 'oidc'; expected one of "
        "client_credentials, json_login, moex_passport, mpt_signin, oidc_password, static, "
        "wso2_password"
    ]


def test_auth_without_type() -> None:
    data = base()
    del upstream(data)["auth"]["type"]
    assert problems_of(data) == [f"{UP}.auth: needs a 'type' field"]


def test_missing_password_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "run" / "secrets" / "password"
    text = MINIMAL_YAML.replace("password: plain-password-1d2e", f"password_file: {missing}")
    problems = load_problems(write(tmp_path / "c.yaml", text))
    assert problems == [f"{UP}.auth.password_file: file not found: {missing}"]


def test_missing_tls_cert_file_names_the_file(tmp_path: Path, files: Files) -> None:
    missing = tmp_path / "nope.crt"
    data = base()
    upstream(data)["tls"] = {"cert_file": str(missing), "key_file": str(files.key)}
    line = the_problem(problems_of(data), f"{UP}.tls.cert_file: ")
    assert line.startswith(f"{UP}.tls.cert_file: file not found: {missing}")


@pytest.mark.parametrize("field", ["ca_file", "key_file", "p12_file"])
def test_other_missing_tls_files_name_the_file(tmp_path: Path, files: Files, field: str) -> None:
    missing = tmp_path / f"missing-{field}"
    tls = {"cert_file": str(files.cert), "key_file": str(files.key)} if field == "key_file" else {}
    tls[field] = str(missing)
    data = base()
    upstream(data)["tls"] = tls
    line = the_problem(problems_of(data), f"{UP}.tls.{field}: ")
    assert f"file not found: {missing}" in line


def test_missing_cert_file_in_auth_tls(tmp_path: Path, files: Files) -> None:
    missing = tmp_path / "idp.crt"
    data = base()
    upstream(data)["auth"]["tls"] = {"cert_file": str(missing), "key_file": str(files.key)}
    line = the_problem(problems_of(data), f"{UP}.auth.tls.cert_file: ")
    assert f"file not found: {missing}" in line


def test_missing_static_token_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "token"
    data = base()
    upstream(data)["auth"] = {"type": "static", "token_file": str(missing)}
    line = the_problem(problems_of(data), f"{UP}.auth.token_file: ")
    assert f"file not found: {missing}" in line


@pytest.mark.parametrize("given", ["cert_file", "key_file"])
def test_cert_file_and_key_file_go_together(files: Files, given: str) -> None:
    data = base()
    upstream(data)["tls"] = {given: str(getattr(files, given.removesuffix("_file")))}
    assert problems_of(data) == [
        f"{UP}.tls: cert_file and key_file go together: give both or neither"
    ]


def test_cert_and_p12_together_is_an_error(files: Files) -> None:
    data = base()
    upstream(data)["tls"] = {
        "cert_file": str(files.cert),
        "key_file": str(files.key),
        "p12_file": str(files.p12),
    }
    assert problems_of(data) == [f"{UP}.tls: give either cert_file/key_file or p12_file, not both"]


@pytest.mark.parametrize("both", [False, True], ids=["neither", "both"])
def test_static_needs_exactly_one_token_source(files: Files, both: bool) -> None:
    auth = {"type": "static"}
    if both:
        auth.update(token="tok-2", token_file=str(files.token))
    data = base()
    upstream(data)["auth"] = auth
    assert problems_of(data) == [f"{UP}.auth: static auth needs exactly one of token or token_file"]


@pytest.mark.parametrize(
    ("field", "address", "words"),
    [
        ("proxy", "example.com:8080", "must be an IP address"),
        ("proxy", "127.0.0.1", "has no port"),
        ("admin", "127.0.0.1:99999", "bad port"),
        ("admin", ":9090", "has no host"),
        ("proxy", "[::1:8080", "not host:port"),
    ],
)
def test_bad_listen_address(field: str, address: str, words: str) -> None:
    data = base()
    data["listen"] = {field: address}
    line = the_problem(problems_of(data), f"listen.{field}: ")
    assert words in line


def test_empty_upstreams() -> None:
    data = base()
    data["upstreams"] = {}
    line = the_problem(problems_of(data), "upstreams: ")
    assert "at least 1 item" in line


def test_no_upstreams_at_all(tmp_path: Path) -> None:
    assert load_problems(write(tmp_path / "c.yaml", "")) == ["upstreams: is required"]
    assert load_problems(write(tmp_path / "d.yaml", "listen: {}\n")) == ["upstreams: is required"]


def test_empty_match_list() -> None:
    data = base()
    upstream(data)["match"] = []
    assert the_problem(problems_of(data), f"{UP}.match: ")


@pytest.mark.parametrize("host", ["https://api.moex.com", "api.moex.com/path", "user@api.moex.com"])
def test_match_must_be_a_host(host: str) -> None:
    data = base()
    upstream(data)["match"] = [host]
    assert the_problem(problems_of(data), f"{UP}.match.0: ")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (("max_body",), 0),
        (("replay_limit",), -1),
        (("timeouts", "connect"), 0),
        (("timeouts", "read"), -5),
        (("eager",), "maybe"),
        (("tls", "verify"), "sometimes"),
    ],
)
def test_bad_numbers_and_flags(field: tuple[str, ...], value: object) -> None:
    data = base()
    node = upstream(data)
    for key in field[:-1]:
        node = node.setdefault(key, {})
    node[field[-1]] = value
    path = ".".join((UP, *field))
    line = the_problem(problems_of(data), f"{path}: ")
    assert repr(value) in line  # not a secret: the given value is shown


def test_bad_log_level() -> None:
    data = base()
    data["log"] = {"level": "verbose"}
    line = the_problem(problems_of(data), "log.level: ")
    assert "'verbose'" in line


def _two_upstreams(first: str, second: str) -> dict[str, Any]:
    data = base()
    other = copy.deepcopy(upstream(data))
    upstream(data)["match"] = [first]
    other["match"] = ["other.example.com", second]
    data["upstreams"]["kisc"] = other
    return data


def test_same_host_in_two_upstreams() -> None:
    problems = problems_of(_two_upstreams("api.moex.com", "API.moex.com"))
    assert len(problems) == 1
    expected = "upstreams.kisc.match: 'api.moex.com' is already matched by upstreams.moex-ntb"
    assert expected in problems[0]


def test_same_host_different_port_is_allowed() -> None:
    config = validate_config(_two_upstreams("api.moex.com", "api.moex.com:8443"))
    assert set(config.upstreams) == {"moex-ntb", "kisc"}


def test_same_host_problem_starts_with_field_path() -> None:
    problems = problems_of(_two_upstreams("api.moex.com", "api.moex.com"))
    assert problems[0].startswith("upstreams.kisc.match: ")


def test_several_problems_reported_at_once() -> None:
    data = base()
    upstream(data)["auth"]["token_url"] = "bad"
    upstream(data)["target"] = "bad"
    data["listen"] = {"proxy": "nohost"}
    problems = problems_of(data)
    assert len(problems) == 3
    assert {p.split(":")[0] for p in problems} == {
        "listen.proxy",
        f"{UP}.target",
        f"{UP}.auth.token_url",
    }
    assert str(ConfigError(problems)) == "\n".join(problems)


def test_invalid_yaml_gives_line_number(tmp_path: Path) -> None:
    text = "upstreams:\n  moex-ntb:\n    match: [api.moex.com\n    target: x\n"
    path = write(tmp_path / "c.yaml", text)
    problems = load_problems(path)
    assert len(problems) == 1
    assert problems[0].startswith(f"{path}: not valid YAML at line 4, column 11: ")


def test_invalid_yaml_tab_indentation(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "upstreams:\n\tmoex-ntb: {}\n")
    [problem] = load_problems(path)
    assert problem == f"{path}: tab character at line 2, column 1: YAML indents with spaces"


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "c.yaml", text)
    assert load_problems(path) == [
        f"{path}: the top level must be a mapping (listen:, upstreams:, ...)"
    ]


def test_config_file_not_found(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert load_problems(missing) == [f"config file not found: {missing}"]
    assert load_problems(None, {"SIDECAR_CONFIG": str(missing)}) == [
        f"config file not found: {missing}"
    ]


def test_config_path_is_a_directory(tmp_path: Path) -> None:
    [problem] = load_problems(tmp_path)
    assert problem.startswith(f"cannot read config file {tmp_path}")


def test_no_config_given() -> None:
    assert load_problems(None, {}) == ["no config file: pass --config PATH or set SIDECAR_CONFIG"]
    assert load_problems(None, {"SIDECAR_CONFIG": ""}) == [
        "no config file: pass --config PATH or set SIDECAR_CONFIG"
    ]


def test_non_string_top_level_key_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL_YAML + "8080: proxy\n")
    [problem] = load_problems(path)
    assert "8080" in problem


def test_non_utf8_config_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(MINIMAL_YAML.encode() + "log: {level: \u043e\u0442\u043b}\n".encode("cp1251"))
    [problem] = load_problems(path)
    assert str(path) in problem


def test_unreadable_password_file_names_the_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_bytes(b"\xd0\xffpw\n")
    data = base()
    del upstream(data)["auth"]["password"]
    upstream(data)["auth"]["password_file"] = str(secret)
    line = the_problem(problems_of(data), f"{UP}.auth")
    assert line.startswith(f"{UP}.auth.password_file: ")
    assert str(secret) in line


# --- secrets never shown --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "field", "secret"),
    [
        ("auth", "password", 73519864),
        ("auth", "password", ["list-secret-1a"]),
        ("auth", "password", {"map-secret-2b": None}),
        ("auth", "client_secret", 84620975),
        ("tls", "p12_password", 95731086),
    ],
)
def test_invalid_secret_value_is_not_echoed(
    files: Files, where: str, field: str, secret: object
) -> None:
    data = base()
    block = upstream(data).setdefault(where, {})
    if where == "tls":
        block["p12_file"] = str(files.p12)
    block[field] = secret
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    the_problem(info.value.problems, f"{UP}.{where}.{field}: ")
    shown = str(info.value) + repr(info.value)
    for word in ("73519864", "list-secret-1a", "map-secret-2b", "84620975", "95731086"):
        assert word not in shown


def test_invalid_static_token_is_not_echoed() -> None:
    data = base()
    upstream(data)["auth"] = {"type": "static", "token": 6174061740}
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    the_problem(info.value.problems, f"{UP}.auth.token: ")
    assert "6174061740" not in str(info.value)


def test_secret_from_env_is_not_echoed(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL_YAML)
    environ = {
        "SIDECAR_UPSTREAMS__MOEX_NTB__AUTH__CLIENT_SECRET": "[env-secret-7c]",
        "SIDECAR_UPSTREAMS__MOEX_NTB__AUTH__TOKEN_URL": "nowhere",
    }
    problems = load_problems(path, environ)
    the_problem(problems, f"{UP}.auth.token_url: ")
    assert "env-secret-7c" not in "\n".join(problems)


def test_secrets_of_a_valid_config_are_not_in_errors_elsewhere(
    tmp_path: Path, files: Files
) -> None:
    text = full_yaml(files).replace("target: https://api.kisc.kz/v1", "target: kisc")
    problems = load_problems(write(tmp_path / "c.yaml", text))
    assert problems == [
        "upstreams.kisc.target: not a valid URL: expected http:// or https:// with a host "
        "(got 'kisc')"
    ]
    for secret in ALL_SECRETS:
        assert secret not in "\n".join(problems)


@pytest.mark.parametrize("secret", ["!S3cretPw", "*S3cretPw"])
def test_yaml_error_does_not_echo_unquoted_secret(tmp_path: Path, secret: str) -> None:
    text = MINIMAL_YAML.replace("password: plain-password-1d2e", f"password: {secret}")
    [problem] = load_problems(write(tmp_path / "c.yaml", text))
    assert "not valid YAML at line 10" in problem
    assert "S3cretPw" not in problem


@pytest.mark.parametrize("value", ["{Pa55word}", "[Pa55word]"])
def test_env_password_with_brackets_stays_a_string(tmp_path: Path, value: str) -> None:
    path = write(tmp_path / "c.yaml", MINIMAL_YAML)
    config = load_config(path, environ={"SIDECAR_UPSTREAMS__MOEX_NTB__AUTH__PASSWORD": value})
    assert config.upstreams["moex-ntb"].auth.password.get_secret_value() == value


def test_redacted_masks_every_secret(tmp_path: Path, files: Files) -> None:
    config = load_config(write(tmp_path / "full.yaml", full_yaml(files)), environ={})
    data = redacted(config)
    dumped = yaml.safe_dump(data)
    for secret in ALL_SECRETS:
        assert secret not in dumped
    ups = data["upstreams"]
    assert ups["moex-ntb"]["auth"]["password"] == "***"
    assert ups["moex-ntb"]["auth"]["client_secret"] == "***"
    assert ups["kisc"]["auth"]["client_secret"] == "***"
    assert ups["kisc"]["tls"]["p12_password"] == "***"
    assert ups["static-api"]["auth"]["token"] == "***"
    assert ups["static-file"]["auth"]["token_file"] == str(files.token)
    assert ups["moex-ntb"]["tls"]["cert_file"] == str(files.cert)
    assert ups["moex-ntb"]["auth"]["username"] == "trader"
    assert FILE_TOKEN not in repr(config) and PASSWORD not in repr(config)


def test_credentials_in_urls_are_refused() -> None:
    data = base()
    upstream(data)["target"] = "https://svc:hunter2@api.moex.com"
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    line = the_problem(info.value.problems, f"{UP}.target: ")
    assert "user or password" in line and "hunter2" not in str(info.value)


def test_match_entries_lose_a_trailing_dot() -> None:
    data = base()
    upstream(data)["match"] = ["API.moex.com.", "ax.kisc.kz.:8243"]
    assert validate_config(data).upstreams["moex-ntb"].match == ["api.moex.com", "ax.kisc.kz:8243"]
