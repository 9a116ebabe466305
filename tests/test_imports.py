"""What `sidecar run` imports for a config that uses no optional feature: nothing that only
an optional feature, `sidecar check`, `doctor` or the sandbox needs. Each module here costs
resident memory for the life of the process (cryptography alone about 10 MiB)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# The modules `sidecar run` loads before it reads a config: the CLI, the running sidecar,
# the proxy's listener and the auth factory.
RUN_PATH = ("sidecar.cli", "sidecar.app", "sidecar.proxy.listener", "sidecar.auth.factory")

NOT_AT_RUN = (
    "cryptography",  # PKCS#12, pkcs7 signing, interception, the sealed store
    "aiohttp", "yarl",  # the sandbox's emulators and the tests
    "redis",  # store.type: redis
    "sidecar.sandbox.emulator", "sidecar.check", "sidecar.doctor",
    "sidecar.interception.ca", "sidecar.interception.leaves",
    "sidecar.signing.pkcs7", "sidecar.signing.command", "sidecar.signing.ncanode",
    "sidecar.auth.json_login", "sidecar.auth.keycloak", "sidecar.auth.wso2",
    "sidecar.auth.moex_passport", "sidecar.auth.mpt", "sidecar.auth.client_credentials",
    "sidecar.store.shared",
)


def test_the_run_path_loads_no_optional_feature() -> None:
    code = (
        "import importlib, sys\n"
        f"for name in {RUN_PATH!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m in {NOT_AT_RUN!r} "
        f"or m.split('.')[0] in {NOT_AT_RUN!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
