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
from sidecar.sandbox.pki import IssuedCert, Pki
from sidecar.sandbox.registration import MoexStack
from sidecar.sandbox.servers import SandboxStack, start_sandbox, stop_sandbox
from sidecar.sandbox.wso2 import Wso2Gateway, issue_kisc_client, start_wso2

log = structlog.get_logger("sidecar.sandbox")

NTB_HOST = "api.moex.com"
KISC_HOST = "ax.kisc.kz"


def _secret(secrets_dir: Path, name: str, value: str) -> Path:
    secrets_dir.mkdir(parents=True, exist_ok=True)
    path = secrets_dir / name
    path.write_text(value + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


def kisc_upstream(
    gateway: Wso2Gateway, gateway_url: str, pki: Pki, client: IssuedCert, secrets_dir: Path
) -> dict[str, Any]:
    """The KISC (WSO2) upstream as a bank would configure it: the portal's PKCS#12 on both
    legs, consumer key/secret by Basic auth, FAPI headers, x-idempotency-key required."""
    user, password = next(iter(gateway.users.items()))
    return {
        "match": [KISC_HOST],
        "target": gateway_url,
        "tls": {
            "ca_file": str(pki.ca_file),
            "p12_file": str(client.p12_file),
            "p12_password_file": str(
                _secret(secrets_dir, "kisc-p12-password", client.p12_password)
            ),
        },
        "auth": {
            "type": "wso2_password",
            "token_url": gateway_url + gateway.token_path,
            "consumer_key": gateway.consumer_key,
            "consumer_secret_file": str(
                _secret(secrets_dir, "kisc-consumer-secret", gateway.consumer_secret)
            ),
            "username": user,
            "password_file": str(_secret(secrets_dir, "kisc-password", password)),
        },
        "headers": {"x-fapi-interaction-id": "{uuid}", "x-fapi-auth-date": "{now}"},
        "header_date": {"format": "iso8601", "utc_offset": "+06:00"},
        "require_headers": {"POST": ["x-idempotency-key"]},
    }


MOEX_REGISTRATION_HOST = "play-apim.moex.com"


def moex_registration_upstream(
    moex: MoexStack, token_url: str, pki: Pki, secrets_dir: Path
) -> dict[str, Any]:
    """MOEX client registration as a broker would configure it: Passport + an RSA signature,
    1 request/s and 1 MB, the test stand's limits."""
    return {
        "match": [MOEX_REGISTRATION_HOST],
        "target": moex.api_url,
        "tls": {"ca_file": str(pki.ca_file)},
        "max_body": 1024 * 1024,
        "rate_limit": {"rps": 1, "burst": 1, "max_wait": 30},
        "auth": {
            "type": "moex_passport",
            "passport_url": moex.passport_url,
            "token_url": token_url,
            "client_id": moex.client_id,
            "client_secret_file": str(
                _secret(secrets_dir, "moex-client-secret", moex.client_secret)
            ),
            "username": moex.user,
            "password_file": str(
                _secret(secrets_dir, "moex-passport-password", moex.passport.users[moex.user])
            ),
            "algorithm": "RSA",
            "scope": "client_registration",
            "signer": {
                "type": "pkcs7",
                "cert_file": str(moex.signer.cert_file),
                "key_file": str(moex.signer.key_file),
            },
        },
    }


def sandbox_config(
    stack: SandboxStack,
    secrets_dir: Path,
    *,
    proxy: str = "127.0.0.1:8080",
    admin: str = "127.0.0.1:9090",
) -> dict[str, Any]:
    """A config for the sidecar in front of ``stack``; secrets are written to ``secrets_dir``."""
    user, password = next(iter(stack.idp.users.items()))
    password_file = _secret(secrets_dir, "ntb-password", password)
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
    kisc_port: int = 8243,
) -> None:
    """Run until ``stop`` is set; ``directory`` (absolute) receives the PKI and the config."""
    from sidecar.app import Sidecar

    stack = await start_sandbox(directory / "pki", idp_port=idp_port, api_port=api_port)
    gateway, gateway_server = await start_wso2(stack.pki, port=kisc_port)
    try:
        data = sandbox_config(
            stack,
            directory / "secrets",
            proxy=f"127.0.0.1:{proxy_port}",
            admin=f"127.0.0.1:{admin_port}",
        )
        data["upstreams"]["kisc"] = kisc_upstream(
            gateway, gateway_server.url, stack.pki, issue_kisc_client(stack.pki),
            directory / "secrets",
        )
        config_file = directory / "sidecar.yaml"
        config_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        sidecar = Sidecar(validate_config(data))
        try:
            await sidecar.start()
            banner = _banner(stack, gateway_server.url, sidecar.proxy_port, sidecar.admin_port,
                             config_file)
            print(banner, flush=True)
            await stop.wait()
        finally:
            await sidecar.stop()
    finally:
        await gateway_server.stop()
        await stop_sandbox(stack)


def _banner(
    stack: SandboxStack, kisc_url: str, proxy_port: int, admin_port: int, config_file: Path
) -> str:
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
            f"  KISC gateway    {kisc_url}   (WSO2, mTLS on /token and the API)",
            f"  config written  {config_file}",
            "",
            "Try it (the sidecar logs in, adds the Bearer token and the client certificate):",
            f"  curl -x http://127.0.0.1:{proxy_port} http://{NTB_HOST}/ntb/hello",
            "",
            "More:",
            f"  curl -x http://127.0.0.1:{proxy_port} 'http://{NTB_HOST}/ntb/echo?echo=1' "
            "--data-binary @README.md   # the body comes back byte for byte",
            f"  curl -x http://127.0.0.1:{proxy_port} http://{KISC_HOST}/etsfo/1.0.0/messages/",
            f"  curl -x http://127.0.0.1:{proxy_port} http://{KISC_HOST}/etsfo/1.0.0/messages/ "
            "-H 'x-idempotency-key: DEMO-1' -H 'Content-Type: application/xml' -d '<Doc/>'",
            f"  curl -x http://127.0.0.1:{proxy_port} http://unknown.example/   # refused: 403",
            f"  curl -k -X POST {control}/revoke   # end the SSO session; sidecar logs in again",
            f"  curl -k {control}/stats",
            "Press Ctrl-C to stop.",
        ]
    )
