"""NCANode (malikzh/NCANode, Kalkan inside) for Kazakh GOST keys (docs/protocols.md,
"Signing backends").

v3: ``POST /cms/sign`` REST; v2: JSON-RPC ``cms.sign`` on ``POST /``. NCANode has no auth of
its own, so it must listen on loopback or a private network only.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from sidecar.config.auth import NcaNodeSignerConfig
from sidecar.http1.errors import TimedOut, TransportError
from sidecar.http1.fetch import Fetcher
from sidecar.signing.base import SigningError, b64


class NcaNodeSigner:
    def __init__(self, cfg: NcaNodeSignerConfig, detached: bool) -> None:
        self.detached = detached
        self._cfg = cfg
        self._p12 = b64(cfg.p12_file.read_bytes())
        self._http = Fetcher(None, cfg.timeout)  # a local service: plain HTTP or system CAs

    async def sign(self, data: bytes) -> bytes:
        cfg = self._cfg
        password = cfg.p12_password.get_secret_value()
        if cfg.version == 3:
            url = cfg.url.rstrip("/") + "/cms/sign"
            body: dict[str, Any] = {
                "data": b64(data),
                "signers": [{"key": self._p12, "password": password, "keyAlias": None}],
                "withTsp": False,
                "tsaPolicy": None,
                "detached": self.detached,
            }
        else:
            url = cfg.url.rstrip("/") + "/"
            body = {
                "version": "2.0",
                "method": "cms.sign",
                "params": {
                    "data": b64(data),
                    "p12array": [{"p12": self._p12, "password": password, "alias": ""}],
                },
            }
        answer = await self._post(url, body)
        return self._cms(answer)

    async def _post(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            reply = await self._http.request("POST", url, json_body=body)
        except TimedOut:
            raise SigningError(f"NCANode did not answer within {self._cfg.timeout:g} s") from None
        except TransportError as exc:
            raise SigningError(
                f"cannot reach NCANode at {self._cfg.url}: {exc.describe()}"
            ) from None
        try:
            answer = json.loads(reply.body)
        except ValueError:
            raise SigningError(f"NCANode answered {reply.status} with a non-JSON body") from None
        if reply.status != 200:
            raise SigningError(f"NCANode answered {reply.status}: {_message(answer)}")
        if not isinstance(answer, dict):
            raise SigningError("NCANode answered something other than a JSON object")
        return answer

    def _cms(self, answer: dict[str, Any]) -> bytes:
        status = answer.get("status")
        if self._cfg.version == 2 and status not in (0, "0"):
            raise SigningError(f"NCANode v2 status {status}: {_message(answer)}")
        cms = answer.get("cms")
        if not isinstance(cms, str) or not cms:
            raise SigningError("NCANode answer has no cms")
        try:
            return base64.b64decode("".join(cms.split()), validate=True)
        except (binascii.Error, ValueError):
            raise SigningError("NCANode cms is not base64") from None

    async def close(self) -> None:
        await self._http.close()


def _message(answer: Any) -> str:
    if isinstance(answer, dict):
        return str(answer.get("message") or answer.get("details") or "no message")[:200]
    return "no message"
