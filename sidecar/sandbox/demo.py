"""``sidecar sandbox``: the emulators plus a sidecar in front, configured like production.

The config it writes uses the same contract as a real deployment (secrets in files, CA and
client certificate by path), so a user can read it as an example and edit it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Any

import structlog
import yaml

from sidecar.config import validate_config
from sidecar.sandbox.moex import MoexStack, start_moex_registration
from sidecar.sandbox.mpt import start_mpt
from sidecar.sandbox.pki import IssuedCert, Pki
from sidecar.sandbox.ports import Ports
from sidecar.sandbox.servers import SandboxStack, start_sandbox, stop_sandbox
from sidecar.sandbox.wso2 import (
    SANDBOX_SYSTEM_PREFIX,
    Wso2Gateway,
    issue_kisc_client,
    start_wso2,
)
from sidecar.sandbox.xtrace import XTRACE_HOST, start_xtrace, xtrace_upstream

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


def _ntb_tls(stack: SandboxStack) -> dict[str, str]:
    """The NTB leg's TLS: the sandbox CA, plus the client certificate only when the API was
    started as an mTLS server (MOEX asks for none on NTB)."""
    tls = {"ca_file": str(stack.pki.ca_file)}
    if stack.ntb_mtls:
        tls["cert_file"] = str(stack.client_cert.cert_file)
        tls["key_file"] = str(stack.client_cert.key_file)
    return tls


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
                "tls": _ntb_tls(stack),
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


async def run_sandbox(directory: Path, stop: asyncio.Event, ports: Ports) -> None:
    """Run until ``stop`` is set; ``directory`` (absolute) receives the PKI and the config."""
    from sidecar.app import Sidecar
    from sidecar.reload import Reloader

    secrets_dir = directory / "secrets"
    stack = await start_sandbox(directory / "pki", idp_port=ports.idp, api_port=ports.api)
    async with contextlib.AsyncExitStack() as running:
        running.push_async_callback(stop_sandbox, stack)
        gateway, gateway_server = await start_wso2(stack.pki, port=ports.kisc)
        running.push_async_callback(gateway_server.stop)
        moex = await start_moex_registration(
            stack.pki, stack.idp, passport_port=ports.passport, api_port=ports.registration
        )
        running.push_async_callback(moex.stop)
        mpt, mpt_server = await start_mpt(stack.pki, port=ports.mpt)
        running.push_async_callback(mpt_server.stop)
        xtrace, xtrace_server = await start_xtrace(stack.pki, port=ports.xtrace)
        running.push_async_callback(xtrace_server.stop)

        data = sandbox_config(
            stack, secrets_dir, proxy=f"127.0.0.1:{ports.proxy}", admin=f"127.0.0.1:{ports.admin}"
        )
        upstreams = data["upstreams"]
        upstreams["kisc"] = kisc_upstream(
            gateway,
            gateway_server.url,
            stack.pki,
            # CN "PS.bank-user", portal user "bank-user": the CN without its system prefix.
            issue_kisc_client(stack.pki, system_prefix=SANDBOX_SYSTEM_PREFIX),
            secrets_dir,
        )
        upstreams["moex-registration"] = moex_registration_upstream(
            moex, stack.token_url, stack.pki, secrets_dir
        )
        upstreams["mpt"] = mpt_upstream(mpt_server.url, mpt.key_path, stack.pki)
        upstreams["xtrace"] = xtrace_upstream(
            xtrace, xtrace_server.url, str(stack.pki.ca_file),
            str(_secret(secrets_dir, "xtrace-password", next(iter(xtrace.users.values())))),
        )
        config_file = directory / "sidecar.yaml"
        config_file.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        config = validate_config(data)
        sidecar = Sidecar(config)
        running.push_async_callback(sidecar.stop)
        await sidecar.start()
        # Like `sidecar run`: SIGHUP (and, when configured, a change of the file) reloads
        # the config the sandbox wrote, so a user can edit it and try the result.
        reloader = Reloader(sidecar, config_file, interval=config.reload.interval)
        if config.reload.watch:
            reloader.start()
        running.push_async_callback(reloader.stop)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: reloader.trigger("SIGHUP"))
        running.callback(loop.remove_signal_handler, signal.SIGHUP)
        urls = {
            "MOEX SSO (IdP)": f"{stack.idp_server.url}   realm {stack.idp.realm}",
            "MOEX NTB API": f"{stack.api_url}   (Bearer token, no client certificate)",
            "MOEX Passport": moex.passport_url,
            "MOEX registration": f"{moex.api_url}   (1 request/s, 11:00-16:00 MSK)",
            "KISC gateway": f"{gateway_server.url}   (WSO2, mTLS on /token and the API)",
            "MPT true API": mpt_server.url + MPT_BASE,
            "MPT xTrace": f"{xtrace_server.url}   (JSON login, json_login)",
        }
        print(_banner(urls, sidecar.proxy_port, sidecar.admin_port, config_file), flush=True)
        await stop.wait()


MPT_HOST = "stage.ismet.kz"
MPT_BASE = "/api/v3/true-api"


def mpt_upstream(server_url: str, key_path: str, pki: Pki) -> dict[str, Any]:
    """MPT with an RSA key signed in-process (Kazakh GOST keys would use ncanode)."""
    signer = pki.issue_client("mpt-signer", "sandbox-company")
    return {
        "match": [MPT_HOST],
        "target": server_url,
        "tls": {"ca_file": str(pki.ca_file)},
        "auth": {
            "type": "mpt_signin",
            "base_url": server_url + key_path.removesuffix("/auth/key"),
            "signer": {
                "type": "pkcs7",
                "cert_file": str(signer.cert_file),
                "key_file": str(signer.key_file),
            },
        },
    }


def _banner(urls: dict[str, str], proxy_port: int, admin_port: int, config_file: Path) -> str:
    control = urls["MOEX SSO (IdP)"].split()[0] + "/_sandbox"
    proxy = f"http://127.0.0.1:{proxy_port}"
    return "\n".join(
        [
            "",
            "authsidecar sandbox is up",
            f"  {'sidecar proxy':<18} {proxy}",
            f"  {'admin / status':<18} http://127.0.0.1:{admin_port}/status",
            *(f"  {name:<18} {url}" for name, url in urls.items()),
            f"  {'config written':<18} {config_file}",
            "",
            "Try it (the sidecar logs in and adds the Bearer token):",
            f"  curl -x http://127.0.0.1:{proxy_port} http://{NTB_HOST}/ntb/hello",
            "",
            "More:",
            f"  curl -x http://127.0.0.1:{proxy_port} 'http://{NTB_HOST}/ntb/echo?echo=1' "
            "--data-binary @README.md   # the body comes back byte for byte",
            f"  curl -x http://127.0.0.1:{proxy_port} http://{KISC_HOST}/etsfo/1.0.0/messages/",
            f"  curl -x http://127.0.0.1:{proxy_port} http://{KISC_HOST}/etsfo/1.0.0/messages/ "
            "-H 'x-idempotency-key: DEMO-1' -H 'Content-Type: application/xml' -d '<Doc/>'",
            f"  curl -x {proxy} http://{MPT_HOST}{MPT_BASE}/cises/info   # signed-challenge login",
            f"  curl -x {proxy} http://{XTRACE_HOST}/api/v1/codes   # xTrace: json_login",
            f"  curl -x {proxy} http://{MOEX_REGISTRATION_HOST}/client/v1/applications/ "
            "-H 'Content-Type: application/xml' -d '<DOC DOC_DATE=\"2026-11-20\" DOC_NUM=\"1\"/>'"
            "   # Passport + signature (answers 503 outside 11:00-16:00 MSK)",
            f"  curl -x http://127.0.0.1:{proxy_port} http://unknown.example/   # refused: 403",
            f"  curl -k -X POST {control}/revoke   # end the SSO session; sidecar logs in again",
            f"  curl -k {control}/stats",
            "Press Ctrl-C to stop.",
        ]
    )
