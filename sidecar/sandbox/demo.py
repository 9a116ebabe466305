"""``sidecar sandbox``: the emulators plus a sidecar in front, configured like production.

The config it writes uses the same contract as a real deployment (secrets in files, CA and
client certificate by path), so a user can read it as an example and edit it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import structlog
import yaml

from sidecar.config import validate_config
from sidecar.sandbox.keycloak import KeycloakEmulator
from sidecar.sandbox.servers import SandboxStack, start_sandbox, stop_sandbox

log = structlog.get_logger("sidecar.sandbox")

NTB_HOST = "api.moex.com"


def sandbox_config(
    stack: SandboxStack,
    secrets_dir: Path,
    *,
    proxy: str = "127.0.0.1:8080",
    admin: str = "127.0.0.1:9090",
) -> dict[str, Any]:
    """A config for the sidecar in front of ``stack``; secrets are written to ``secrets_dir``."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    password_file = secrets_dir / "ntb-password"
    user, password = next(iter(stack.idp.users.items()))
    password_file.write_text(password + "\n", encoding="utf-8")
    password_file.chmod(0o600)
    return {
        "listen": {"proxy": proxy, "admin": admin},
        "log": {"level": "info", "format": "json"},
        "upstreams": {
            "moex-ntb": {
                "match": [NTB_HOST],
                "target": stack.api_url,
                "tls": {
                    "ca_file": str(stack.pki.ca_file),
                    "cert_file": str(stack.client_cert.cert_file),
                    "key_file": str(stack.client_cert.key_file),
                },
                "auth": {
                    "type": "oidc_password",
                    "token_url": stack.token_url,
                    "client_id": "LK_NTB_PUBLIC",
                    "username": user,
                    "password_file": str(password_file),
                    "scope": "openid email profile",
                },
            }
        },
    }


async def run_sandbox(
    directory: Path,
    stop: asyncio.Event,
    *,
    proxy_port: int = 8080,
    admin_port: int = 9090,
    idp_port: int = 8443,
    api_port: int = 8444,
) -> None:
    """Run until ``stop`` is set; ``directory`` (absolute) receives the PKI and the config."""
    from sidecar.app import Sidecar

    stack = await start_sandbox(directory / "pki", idp_port=idp_port, api_port=api_port)
    try:
        data = sandbox_config(
            stack,
            directory / "secrets",
            proxy=f"127.0.0.1:{proxy_port}",
            admin=f"127.0.0.1:{admin_port}",
        )
        config_file = directory / "sidecar.yaml"
        config_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        sidecar = Sidecar(validate_config(data))
        try:
            await sidecar.start()
            print(_banner(stack, sidecar.proxy_port, sidecar.admin_port, config_file), flush=True)
            await stop.wait()
        finally:
            await sidecar.stop()
    finally:
        await stop_sandbox(stack)


def _banner(stack: SandboxStack, proxy_port: int, admin_port: int, config_file: Path) -> str:
    idp: KeycloakEmulator = stack.idp
    control = stack.idp_server.url + "/_sandbox"
    return "\n".join(
        [
            "",
            "authsidecar sandbox is up",
            f"  sidecar proxy   http://127.0.0.1:{proxy_port}",
            f"  admin / status  http://127.0.0.1:{admin_port}/status",
            f"  MOEX SSO (IdP)  {stack.idp_server.url}   realm {idp.realm}",
            f"  MOEX NTB API    {stack.api_url}   (mTLS, client certificate required)",
            f"  config written  {config_file}",
            "",
            "Try it (the sidecar logs in, adds the Bearer token and the client certificate):",
            f"  curl -x http://127.0.0.1:{proxy_port} http://{NTB_HOST}/ntb/hello",
            "",
            "More:",
            f"  curl -x http://127.0.0.1:{proxy_port} 'http://{NTB_HOST}/ntb/echo?echo=1' "
            "--data-binary @README.md   # the body comes back byte for byte",
            f"  curl -x http://127.0.0.1:{proxy_port} http://unknown.example/   # refused: 403",
            f"  curl -k -X POST {control}/revoke   # end the SSO session; sidecar logs in again",
            f"  curl -k {control}/stats",
            "Press Ctrl-C to stop.",
        ]
    )
