"""`sidecar sandbox` as a user meets it: its help, the config it writes, its reload on SIGHUP."""

from __future__ import annotations

import dataclasses
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from sidecar.sandbox.ports import ROLES, Ports
from tests.helpers.running import Running, cli_env

REPO = Path(__file__).resolve().parents[2]
# Banner line -> the port it shows.
BANNER_PORTS = {
    "sidecar proxy": "proxy",
    "admin / status": "admin",
    "MOEX SSO (IdP)": "idp",
    "MOEX NTB API": "api",
    "KISC gateway": "kisc",
    "MOEX Passport": "passport",
    "MOEX registration": "registration",
    "MPT true API": "mpt",
    "MPT xTrace": "xtrace",
}
EPHEMERAL = [
    arg for f in dataclasses.fields(Ports) for arg in (f"--{f.name}-port", "0")
]


def start(tmp_path: Path) -> Running:
    return Running(["sandbox", "--dir", ".sandbox", *EPHEMERAL], tmp_path)


def test_help_lists_every_port_with_its_default() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", "sandbox", "--help"],
        capture_output=True, text=True, env=cli_env() | {"COLUMNS": "200"}, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    # One entry per option, its wrapped help lines joined.
    options = " ".join(result.stdout.split()).split(" --")
    for field in dataclasses.fields(Ports):
        entry = next(x for x in options if x.startswith(f"{field.name}-port "))
        assert ROLES[field.name] in entry and f"default: {field.default};" in entry, entry


def _ports_from_banner(running: Running) -> dict[int, int]:
    """Each ephemeral port the sandbox chose -> the default port of the same listener."""
    found: dict[str, int] = {}
    while len(found) < len(BANNER_PORTS):
        name, port = running.wait_for(r"^\s+(\S.*?)\s{2,}https?://127\.0\.0\.1:(\d+)").groups()
        if name in BANNER_PORTS:
            found[BANNER_PORTS[name]] = int(port)
    defaults = Ports()
    return {port: getattr(defaults, name) for name, port in found.items()}


def _as_example(written: str, directory: Path, ports: dict[int, int]) -> dict[str, Any]:
    """The written config as it reads with the default ports and ``--dir .sandbox``."""
    text = written.replace(str(directory), ".sandbox")
    text = re.sub(
        r"127\.0\.0\.1:(\d+)\b", lambda m: f"127.0.0.1:{ports.get(int(m[1]), int(m[1]))}", text
    )
    return yaml.safe_load(text)


def test_config_sandbox_yaml_is_what_the_sandbox_writes(tmp_path: Path) -> None:
    running = start(tmp_path)
    try:
        ports = _ports_from_banner(running)
        running.wait_for(r"curl -x")
        directory = tmp_path / ".sandbox"
        written = _as_example((directory / "sidecar.yaml").read_text(), directory, ports)
    finally:
        assert running.stop() == 0
    example = yaml.safe_load((REPO / "config" / "sandbox.yaml").read_text(encoding="utf-8"))
    # The one difference, on purpose: the example listens beside the sandbox's own sidecar.
    assert example.pop("listen") == {"proxy": "127.0.0.1:8081", "admin": "127.0.0.1:9091"}
    assert written.pop("listen") == {"proxy": "127.0.0.1:0", "admin": "127.0.0.1:0"}
    assert example == written, yaml.safe_dump(written, sort_keys=False)


def test_sighup_reloads_the_sandbox_sidecar(tmp_path: Path) -> None:
    running = start(tmp_path)
    config = tmp_path / ".sandbox" / "sidecar.yaml"
    try:
        running.wait_for(r"curl -x")
        good = config.read_text()
        config.write_text(good + "\nnot_a_field: 1\n")
        running.proc.send_signal(signal.SIGHUP)
        running.wait_for("config_reload_rejected")
        config.write_text(good)
        running.proc.send_signal(signal.SIGHUP)
        running.wait_for("config_reloaded")
        assert running.proc.poll() is None  # SIGHUP no longer ends the sandbox
    finally:
        assert running.stop() == 0
