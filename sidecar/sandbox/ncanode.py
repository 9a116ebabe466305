"""An NCANode-like signing service for the sandbox (docs/protocols.md).

NCANode (malikzh/NCANode) signs with Kazakh GOST keys through Kalkan. This emulator speaks
the same HTTP APIs but signs RSA and EC PKCS#12 keys with ``cryptography``: the CMS is
SignedData in DER, over the exact bytes given (``Binary``), with the signer certificates
included and the digest taken from each certificate's signature algorithm, as NCANode does.
That is enough to exercise any client of the API offline. Like NCANode it has no TLS and
no authentication, so it only ever listens on 127.0.0.1.

* v3 (REST): ``POST /cms/sign`` with ``{"data", "signers": [{"key", "password",
  "keyAlias"}], "withTsp", "tsaPolicy", "detached"}`` → ``{"status": 200, "message": "OK",
  "cms"}``.
* v2 and v1 (JSON-RPC): ``POST /`` with ``cms.sign`` (version 2.0) or ``RAW.sign``
  (version 1.0). Both always sign attached. Errors come back with HTTP 200 and a non-zero
  ``status``. Only these two methods exist here; others answer "Method not found".

Errors follow the NCANode sources, which differ from what one might guess:

* v3 key problems (wrong password, broken base64, not a PKCS#12) raise NCANode's
  ``ServerException``, so they are HTTP **500**: ``{"status": 500, "message": "signers[0]:
  Key reading error: Password incorrect.", "details": null}`` (``KalkanWrapper``,
  ``MessageConstants``). Bad base64 in ``data`` is a 500 with Java's message, for example
  "Illegal base64 character 2d" (``CmsService.create`` wraps every failure). Malformed
  JSON is a 500 "JSON parse error" (the ``RuntimeException`` handler of
  ``ExceptionHandlerControllerAdvice`` catches Spring's ``HttpMessageNotReadableException``).
  ``details`` carries the cause only when ``detailed_errors`` is on (``NCANODE_DEBUG``).
* v3 request validation (``signers`` missing or empty) and a non-JSON content type never
  reach that handler: Spring Boot answers 400 and 415 with its own
  ``{"timestamp", "status", "error", "path"}`` body.
* v2: ``{"httpCode": 400, "status": 3, "message": "Api error: PKCS12 key store mac invalid
  - wrong password or corrupted file."}`` (``ApiController.callMethod``). v1: ``{"status":
  3, "message": 'Invalid parameter "p12". Error: ...'}`` (``ApiVersion10``).

Assumptions [A]: v2 errors keep HTTP 200 (the ``httpCode`` field is in the body); a bad
``raw`` in v1 and unparsable JSON-RPC bodies answer status 3. ``withTsp``/``createTsp``
fail, because there is no TSA offline (a real NCANode without network fails too).

Fault injection (failures, hangs, latency) of the signing calls and statistics are
available as Python methods and over HTTP under ``/_sandbox/``, like the other emulators'.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import time
from collections import Counter
from functools import partial
from typing import Any, ClassVar

from aiohttp import web

from sidecar.sandbox import controls
from sidecar.sandbox.emulator import Emulator
from sidecar.sandbox.ncanode_signing import KeyProblem, KeySpec, java_b64decode
from sidecar.sandbox.ncanode_signing import sign_cms as _sign  # a module global: tests patch it
from sidecar.sandbox.servers import TlsServer

__all__ = ["DEFAULT_PORT", "NcaNode", "java_b64decode", "start_ncanode"]

DEFAULT_PORT = 14579  # NCANode's own default (NCANODE_PORT)
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024**2  # Spring has no JSON body limit; keep big batches working
_REASONS = {
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    415: "Unsupported Media Type",
}
_BANNER = "NCANode sandbox emulator. Use POST /cms/sign (API v3) or POST / (API v1/v2).\n"

_NO_TSP = "TSP is unavailable: the sandbox has no TSA to timestamp with"
# JSON-RPC statuses (kz.ncanode.api.core.ApiStatus).
_OK = 0
_VERSION_NOT_SPECIFIED = 1
_VERSION_NOT_SUPPORTED = 2
_INVALID_PARAMETER = 3
_METHOD_NOT_FOUND = 4
_API_ERROR = 5
_PARAMS_NOT_FOUND = 6
_METHOD_NOT_SPECIFIED = 7


class _RpcError(Exception):
    """A JSON-RPC (v1/v2) failure, answered with HTTP 200 and a non-zero status."""

    def __init__(self, status: int, message: str, http_code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.http_code = http_code  # v2 bodies carry it; v1 bodies do not


def _spring_error(status: int, path: str) -> web.Response:
    """Spring Boot's default error body, used where NCANode's own handler is not reached."""
    now = dt.datetime.now(dt.UTC)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}+00:00"
    body = {"timestamp": stamp, "status": status, "error": _REASONS[status], "path": path}
    return web.json_response(body, status=status)


def _as_bool(value: Any) -> bool:
    """Jackson's view of a boolean field: null is false, "true"/"false" are coerced."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"Cannot deserialize value of type `boolean` from {value!r}")


def _rpc_body(status: int, message: str, http_code: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"status": status, "message": message}
    if http_code is not None:
        body["httpCode"] = http_code
    return body


def _as_rpc_bool(value: Any) -> bool:
    """json-simple hands booleans through as they are; anything else counts as false."""
    return value is True


class NcaNode(Emulator):
    """NCANode's v3 REST and v1/v2 JSON-RPC signing APIs, with sandbox controls.

    Settings are plain attributes, read on every call (``node.latency = 0.5``). The
    controlled calls are the signing calls; an injected failure has the called API's
    error shape.
    """

    SETTINGS: ClassVar[dict[str, controls.Validator]] = {
        "latency": controls.number,
        "detailed_errors": controls.boolean,
    }

    def __init__(
        self,
        *,
        latency: float = 0.0,
        detailed_errors: bool = False,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        super().__init__(client_max_size=max_request_bytes)
        self.latency = latency
        self.detailed_errors = detailed_errors  # NCANODE_DEBUG: fill "details" with the cause

        self._calls = 0
        self._by_version: Counter[str] = Counter()
        self._errors = 0
        self._signatures = 0

        router = self._app.router
        router.add_post("/cms/sign", self._v3_handler)
        router.add_post("/", self._rpc_handler)
        router.add_get("/", self._banner_handler)
        self.add_sandbox_routes(none_status=True)
        router.add_route("*", "/{tail:.*}", self._not_found_handler)

    def stats(self) -> dict[str, Any]:
        """Signing calls: ``by_version`` counts "v3", "v2", "v1" and "rpc" (a JSON-RPC call
        without a supported version); ``errors`` every answer that was not a signature."""
        return {
            "calls": self._calls,
            "by_version": dict(self._by_version),
            "errors": self._errors,
            "signatures": self._signatures,
            **self.call_stats(),
        }

    def reset_stats(self) -> None:
        super().reset_stats()
        self._calls = 0
        self._by_version.clear()
        self._errors = 0
        self._signatures = 0

    def answer_closed(self) -> web.Response:
        body = {"status": 503, "message": "Server is shutting down", "details": None}
        return web.json_response(body, status=503)

    # -- v3 --------------------------------------------------------------------------------

    def _v3_error(self, status: int, message: str | None, cause: str | None) -> web.Response:
        details = cause if self.detailed_errors else None
        body = {"status": status, "message": message, "details": details}
        return web.json_response(body, status=status)

    async def _v3(self, request: web.Request, raw: bytes) -> tuple[web.Response, bool]:
        ctype = request.content_type
        if ctype != "application/json" and not (
            ctype.startswith("application/") and ctype.endswith("+json")
        ):
            return _spring_error(415, request.path), False
        if not raw.strip():
            message = (
                "Required request body is missing: public org.springframework.http."
                "ResponseEntity<kz.ncanode.dto.response.CmsResponse> kz.ncanode.controller."
                "CmsController.create(kz.ncanode.dto.request.CmsCreateRequest)"
            )
            return self._v3_error(500, message, None), False
        try:
            payload = json.loads(raw)
            if not isinstance(payload, dict):
                raise ValueError("Cannot deserialize CmsCreateRequest from a non-object")
            signers = payload.get("signers")
            if signers is not None and not isinstance(signers, list):
                raise ValueError("Cannot deserialize `signers` from a non-array value")
            detached = _as_bool(payload.get("detached"))
            with_tsp = _as_bool(payload.get("withTsp"))
            data = payload.get("data")
            if data is not None and not isinstance(data, str):
                raise ValueError("Cannot deserialize `data` from a non-string value")
            specs: list[KeySpec | None] = []
            for item in signers or []:
                if not isinstance(item, dict):
                    raise ValueError("Cannot deserialize SignerRequest from a non-object")
                key, password, alias = item.get("key"), item.get("password"), item.get("keyAlias")
                if not all(v is None or isinstance(v, str) for v in (key, password, alias)):
                    raise ValueError("Cannot deserialize a SignerRequest field from a non-string")
                # Kalkan is never reached without a key and a password (a NullPointerException).
                specs.append(
                    None if key is None or password is None else KeySpec(key, password, alias)
                )
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            return self._v3_error(500, f"JSON parse error: {exc}", None), False
        if not specs:
            # @NotEmpty on signers fails bean validation: Spring answers, not NCANode.
            return _spring_error(400, request.path), False
        if data is None:
            message = (
                'Cannot invoke "String.getBytes(java.nio.charset.Charset)" because "src" is null'
            )
            return self._v3_error(500, message, None), False
        try:
            content = java_b64decode(data)
        except ValueError as exc:
            return self._v3_error(500, str(exc), str(exc)), False
        for index, spec in enumerate(specs):
            if spec is None:
                message = f"signers[{index}]: key and password are required"
                return self._v3_error(500, message, None), False
        ready = [spec for spec in specs if spec is not None]
        try:
            cms = await asyncio.to_thread(_sign, content, ready, detached=detached)
        except KeyProblem as exc:
            return self._v3_error(500, exc.v3_message(), exc.kalkan_message()), False
        if with_tsp:
            return self._v3_error(500, _NO_TSP, None), False
        self._signatures += len(ready)
        body = {"status": 200, "message": "OK", "cms": base64.b64encode(cms).decode("ascii")}
        return web.json_response(body), True

    # -- v1 / v2 ---------------------------------------------------------------------------

    async def _rpc(self, payload: Any) -> dict[str, Any]:
        """Dispatch one JSON-RPC request; raises _RpcError for every failure."""
        if not isinstance(payload, dict):
            raise _RpcError(_INVALID_PARAMETER, "Invalid JSON")
        version = payload.get("version")
        if version is not None and not isinstance(version, str):
            raise _RpcError(_INVALID_PARAMETER, 'Invalid parameter "version"')
        if not version:
            raise _RpcError(_VERSION_NOT_SPECIFIED, "API version not specified")
        if version not in ("1.0", "2.0"):
            raise _RpcError(_VERSION_NOT_SUPPORTED, "API version not supported")
        http_code = 400 if version == "2.0" else None
        method = payload.get("method")
        if method is not None and not isinstance(method, str):
            raise _RpcError(_INVALID_PARAMETER, 'Invalid parameter "method"', http_code)
        if not method:
            raise _RpcError(_METHOD_NOT_SPECIFIED, '"method" not specified', http_code)
        expected = "cms.sign" if version == "2.0" else "RAW.sign"
        if method != expected:
            raise _RpcError(_METHOD_NOT_FOUND, "Method not found", http_code)
        params = payload.get("params")
        if params is not None and not isinstance(params, dict):
            raise _RpcError(_INVALID_PARAMETER, 'Invalid parameter "params"', http_code)
        if version == "2.0":
            return await self._cms_sign_v2(params or {})
        if params is None:
            raise _RpcError(_PARAMS_NOT_FOUND, '"params" not found in request')
        return await self._raw_sign_v1(params)

    async def _cms_sign_v2(self, params: dict[str, Any]) -> dict[str, Any]:
        def invalid(message: str) -> _RpcError:
            return _RpcError(_INVALID_PARAMETER, f"Api error: {message}", 400)

        def api_error(message: str) -> _RpcError:
            return _RpcError(_API_ERROR, f"Api error: {message}", 500)

        # Fields are validated in CmsSignModel's order: p12array, then data.
        if "p12array" not in params:
            raise invalid("Field 'p12array' is required")
        items = params["p12array"]
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise api_error("p12array must be an array of objects")
        specs: list[KeySpec] = []
        for item in items:
            p12, password, alias = item.get("p12"), item.get("password"), item.get("alias")
            if not isinstance(p12, str) or not isinstance(password, str):
                raise invalid("p12 and password must be strings")
            specs.append(KeySpec(p12, password, alias if isinstance(alias, str) else None))
        if "data" not in params:
            raise invalid("Field 'data' is required")
        if not isinstance(params["data"], str):
            raise api_error("data must be a string")
        try:
            content = java_b64decode(params["data"])
        except ValueError as exc:
            raise invalid(str(exc)) from None
        if not specs:
            raise api_error("no keys in p12array")
        try:
            cms = await asyncio.to_thread(_sign, content, specs, detached=False)
        except KeyProblem as exc:
            if exc.kind == "alias":  # thrown by the method, not by argument validation
                raise api_error("Certificate with specified alias not found") from None
            raise invalid(exc.kalkan_message()) from None
        if _as_rpc_bool(params.get("withTsp")):
            raise api_error(_NO_TSP)
        self._signatures += len(specs)
        return {
            "cms": base64.b64encode(cms).decode("ascii"),
            "status": _OK,
            "message": "",
            # NCANode adds these "for debugging"; clients may log them.
            "documentSizeBefore": len(content),
            "documentSizeAfter": len(cms),
            "signerCountBefore": 0,
            "signerCountAfter": len(specs),
        }

    async def _raw_sign_v1(self, params: dict[str, Any]) -> dict[str, Any]:
        def invalid(name: str, message: str) -> _RpcError:
            return _RpcError(_INVALID_PARAMETER, f'Invalid parameter "{name}". Error: {message}')

        p12, password = params.get("p12"), params.get("password")
        if not isinstance(p12, str):
            raise invalid("p12", "Parameter required")
        if not isinstance(password, str):
            raise invalid("p12", "Password not specified")
        raw = params.get("raw")
        if not isinstance(raw, str):
            raise invalid("raw", "Argument 'raw' is required")
        try:
            content = java_b64decode(raw)
        except ValueError as exc:
            raise invalid("raw", str(exc)) from None
        try:
            # RAW.sign uses the last alias of the key store, so no alias is checked.
            cms = await asyncio.to_thread(
                _sign, content, [KeySpec(p12, password, None)], detached=False
            )
        except KeyProblem as exc:
            raise invalid("p12", exc.kalkan_message()) from None
        if _as_rpc_bool(params.get("createTsp")):
            raise _RpcError(_API_ERROR, f"Api error: {_NO_TSP}")
        self._signatures += 1
        return {
            "result": {"cms": base64.b64encode(cms).decode("ascii")},
            "status": _OK,
            "message": "",
        }

    # -- HTTP handlers ---------------------------------------------------------------------

    @staticmethod
    def _injected_failure(api: str, status: int) -> web.Response:
        """An injected failure in the called API's error shape."""
        message = controls.failure_text(status)
        if api == "v3":
            body: dict[str, Any] = {"status": status, "message": message, "details": None}
        else:
            body = _rpc_body(_API_ERROR, f"Api error: {message}", status)
        return web.json_response(body, status=status)

    async def _serve(self, request: web.Request, api: str) -> web.Response:
        event: dict[str, Any] = {"version": api, "start": time.monotonic()}
        ok = False
        try:
            with self._controls.track(event) as call:
                raw = await request.read()
                payload: Any = None
                if api == "rpc":
                    try:
                        payload = json.loads(raw)
                    except ValueError:
                        payload = None
                    if isinstance(payload, dict) and payload.get("version") in ("1.0", "2.0"):
                        event["version"] = "v1" if payload["version"] == "1.0" else "v2"
                response = await self.intercept(partial(self._injected_failure, api))
                if response is None and api == "v3":
                    response, ok = await self._v3(request, raw)
                elif response is None:
                    try:
                        body = await self._rpc(payload)
                        ok = True
                    except _RpcError as exc:
                        body = _rpc_body(exc.status, exc.message, exc.http_code)
                    # NCANode v1/v2 report errors in the body only; HTTP stays 200.
                    response = web.json_response(body)
                return call.done(response)
        finally:
            self._calls += 1
            self._by_version[event["version"]] += 1
            if not ok:
                self._errors += 1
            event["ok"] = ok

    async def _v3_handler(self, request: web.Request) -> web.Response:
        return await self._serve(request, "v3")

    async def _rpc_handler(self, request: web.Request) -> web.Response:
        return await self._serve(request, "rpc")

    async def _banner_handler(self, request: web.Request) -> web.Response:
        return web.Response(text=_BANNER)

    async def _not_found_handler(self, request: web.Request) -> web.Response:
        await request.read()
        if request.path == "/cms/sign":
            return _spring_error(405, request.path)
        return _spring_error(404, request.path)


async def start_ncanode(*, port: int = 0, **settings: Any) -> tuple[NcaNode, TlsServer]:
    """Start an emulator on http://127.0.0.1:``port`` (plain HTTP, like NCANode).

    ``settings`` are ``NcaNode`` keyword arguments. Stop it with ``server.stop()``.
    """
    node = NcaNode(**settings)
    server = TlsServer(node.app, None, port=port)
    await server.start()
    return node, server
