"""A fault-injecting TLS proxy in front of the sandbox identity providers, and the checks an
IdP fault case runs against a sidecar process.

A case is one upstream of a sidecar run as a child process (``sidecar run``, as operators run
it), whose IdP calls go through a :class:`FaultyIdp`. The proxy passes calls to the real
emulator until a :class:`Fault` is armed; then the calls the fault names get the fault: a
refused connection, no answer, an answer after the sidecar's IdP timeout, a scripted answer,
or the real answer rewritten. Every case of a flow runs at once in one sidecar, each against
its own proxy, so a flow's whole matrix costs about the time of one case.

What a case checks depends on whether the fault leaves the sidecar without a valid token:

* an **outage** (the IdP is down, hangs, errs, or answers something unusable): while the
  token in hand is valid it keeps being used; once it has expired the app gets a fast 503
  JSON naming the upstream and the reason, with ``Retry-After``; the attempts back off
  (counted at the proxy and in the sidecar's ``token_fetch_failed`` events: no tight loop,
  pauses growing past the 0.5 s floor, ``Retry-After`` honoured); and when the fault clears,
  the sidecar recovers by itself;
* an answer the sidecar can **cope with** (``expires_in`` missing or absurdly large, a
  rejected refresh token while the login still works): the app never sees a failure, no
  attempt fails, the IdP is not called in a loop, and ``/status`` shows a bounded lifetime.

Either way the sidecar process stays up, answers ``/healthz``, and logs no crashed loop.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from sidecar.sandbox.servers import TlsServer
from tests.helpers.process import SidecarProcess

TTL = 6.0  # seconds every sandbox token lives in these tests
IDP_TIMEOUT = 1.0  # auth.timeout: one IdP call may take this long
TOKEN_WAIT = 2.0  # timeouts.token_wait
BACKOFF_CAP = 2.0  # auth.backoff_cap: pauses double from 0.5 s up to this
MAX_LIFETIME = 24 * 3600.0  # the longest lifetime the sidecar believes

# Response headers the proxy passes back from the real IdP.
_PASSED_BACK = ("content-type", "set-cookie", "location", "retry-after", "www-authenticate",
                "cache-control", "pragma", "x-micexpassport-marker")
_PASSED_ON = ("authorization", "content-type", "accept")

Rewrite = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class Fault:
    """What a :class:`FaultyIdp` does to the calls it applies to, and what the sidecar should
    do about it.

    ``action``: ``down`` (the port is closed: connection refused), ``hang`` (never answers),
    ``slow`` (passes the call on, answers after the sidecar's IdP timeout), ``answer`` (the
    scripted ``status``/``body``) or ``rewrite`` (passes the call on, rewrites the JSON).
    ``path``/``grant`` narrow the calls it applies to (a path suffix, a form grant_type).
    """

    name: str
    action: str
    reason: str = ""  # what the 503's message must contain (outages only)
    outage: bool = True
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)
    rewrite: Rewrite | None = None
    path: str | None = None
    grant: str | None = None
    backoff_cap: float = BACKOFF_CAP
    min_retry: float = 0.0  # Retry-After the sidecar must wait at least, between attempts
    max_expires_in: float | None = None  # bound on /status expires_in (coping cases)
    # The IdP acts on the call before the fault hits it (slow, rewritten answers), and WSO2
    # revokes the old access token when a refresh token is used: there is then no valid
    # token to keep using, and the app gets the 503 at once.
    revokes: bool = False


def json_answer(status: int, body: dict[str, Any], **fault: Any) -> dict[str, Any]:
    """Keyword arguments for a :class:`Fault` that answers ``status`` with a JSON ``body``."""
    return {"action": "answer", "status": status, "body": json.dumps(body).encode(), **fault}


def drop(key: str) -> Rewrite:
    return lambda data: {k: v for k, v in data.items() if k != key}


def put(key: str, value: Any) -> Rewrite:
    return lambda data: {**data, key: value}


class FaultyIdp:
    """A TLS server passing every call on to ``origin`` (the real emulator), save the ones an
    armed fault applies to. ``standing`` is a fault that always applies (e.g. an SSO that
    rejects every refresh token, so that every renewal is a full login)."""

    def __init__(
        self,
        origin: str,
        server_ssl: ssl.SSLContext,
        client_ssl: ssl.SSLContext,
        *,
        standing: Fault | None = None,
    ) -> None:
        self.origin = origin.rstrip("/")
        self.client_ssl = client_ssl
        self.standing = standing
        self.fault: Fault | None = None
        self.calls: list[tuple[float, str, str | None]] = []  # (monotonic, path, grant)
        self.faulted: list[float] = []  # when calls met the armed fault
        self.refresh_tokens: list[tuple[float, str]] = []  # every refresh token presented
        self.issued_refresh: list[tuple[float, str]] = []  # and every one the IdP handed out
        self._release = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TlsServer(app, server_ssl)

    def url(self, real_url: str) -> str:
        """``real_url`` with the (started) proxy in place of the emulator's origin."""
        assert self.server.running, "start the proxy first: its port is chosen then"
        return self.server.url + str(URL(real_url).relative())

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.client_ssl), trust_env=False
        )
        await self.server.start()

    async def stop(self) -> None:
        self._release.set()
        await self.server.stop()
        if self._http is not None:
            await self._http.close()

    async def arm(self, fault: Fault) -> None:
        self._release.clear()
        self.fault = fault
        if fault.action == "down":
            await self.server.stop()

    async def disarm(self) -> None:
        fault, self.fault = self.fault, None
        self._release.set()
        if fault is not None and fault.action == "down":
            await self.server.start()  # the same port again

    def faulted_since(self, since: float) -> list[float]:
        return [t for t in self.faulted if t >= since]

    def calls_since(self, since: float, grant: str | None = None) -> int:
        return sum(1 for t, _, g in self.calls if t >= since and (grant is None or g == grant))

    @staticmethod
    def _applies(fault: Fault | None, path: str, grant: str | None) -> bool:
        if fault is None or fault.action == "down":
            return False
        if fault.path is not None and not path.endswith(fault.path):
            return False
        return fault.grant is None or fault.grant == grant

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        grant = None
        if request.content_type == "application/x-www-form-urlencoded":
            form = dict(URL("?" + body.decode("ascii", "replace")).query)
            grant = form.get("grant_type")
        now = time.monotonic()
        if grant == "refresh_token":
            self.refresh_tokens.append((now, form.get("refresh_token", "")))
        self.calls.append((now, request.path, grant))
        fault = self.fault if self._applies(self.fault, request.path, grant) else None
        if fault is not None:
            self.faulted.append(now)
        elif self._applies(self.standing, request.path, grant):
            fault = self.standing
        if fault is None:
            return await self._forward(request, body)
        if fault.action == "hang":
            await self._release.wait()
            return web.Response(status=503)
        if fault.action == "answer":
            headers = CIMultiDict(fault.headers)
            headers["Content-Type"] = fault.content_type
            return web.Response(status=fault.status, body=fault.body, headers=headers)
        real = await self._forward(request, body)
        if fault.action == "slow":
            await asyncio.sleep(IDP_TIMEOUT + 0.5)  # the sidecar has given up by now
            return real
        assert fault.rewrite is not None and isinstance(real.body, bytes)
        if real.status != 200:
            return real
        rewritten = fault.rewrite(json.loads(real.body))
        # Python writes an infinite float as "Infinity"; 1e400 is the same value in valid JSON.
        text = json.dumps(rewritten).replace("Infinity", "1e400")
        return web.Response(status=200, text=text, content_type="application/json")

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() in _PASSED_ON}
        async with self._http.request(
            request.method, self.origin + request.path_qs, data=body or None, headers=headers,
            allow_redirects=False,
        ) as resp:
            payload = await resp.read()
            if resp.status == 200 and resp.content_type == "application/json":
                issued = json.loads(payload).get("refresh_token")
                if issued:
                    self.issued_refresh.append((time.monotonic(), issued))
            passed = CIMultiDict(
                (k, v) for k, v in resp.headers.items() if k.lower() in _PASSED_BACK
            )
            return web.Response(status=resp.status, body=payload, headers=passed)


@dataclass(frozen=True)
class Probe:
    """The request a case's app sends through the sidecar, and the statuses that mean "served"."""

    method: str
    url: str
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    ok: frozenset[int] = frozenset({200})


@dataclass
class Answer:
    status: int
    body: Any
    headers: Mapping[str, str]
    took: float

    def __str__(self) -> str:
        return f"{self.status} {self.body!r} after {self.took:.2f} s"


@dataclass
class Case:
    """One fault, on one upstream of the sidecar, behind its own proxy (or two)."""

    name: str  # the upstream's name in the sidecar's config
    fault: Fault
    idp: FaultyIdp  # the proxy the fault is armed on
    upstream: dict[str, Any]
    probe: Probe
    proxies: list[FaultyIdp] = field(default_factory=list)  # every proxy the case uses

    def __str__(self) -> str:
        return f"{self.name} [{self.fault.name}]"


class Matrix:
    """Runs cases at once against one sidecar process and gathers what went wrong."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.cases: list[Case] = []
        self.proc: SidecarProcess | None = None
        self.session: aiohttp.ClientSession | None = None

    def add(self, case: Case) -> None:
        if case.idp not in case.proxies:
            case.proxies.append(case.idp)
        case.upstream.setdefault("timeouts", {})["token_wait"] = TOKEN_WAIT
        # refused_backoff: a refused login (401, 403, invalid_grant) waits 30 s by default;
        # 1 s lets the recovery show within the test.
        case.upstream["auth"].update(timeout=IDP_TIMEOUT, backoff_cap=case.fault.backoff_cap,
                                     refused_backoff=1)
        self.cases.append(case)

    async def run(self) -> None:
        """Start the sidecar, exercise every case at once, stop it. The proxies must be up."""
        config = {
            "listen": {"proxy": "127.0.0.1:0", "admin": "127.0.0.1:0"},
            "log": {"level": "info", "format": "json"},
            "reload": {"watch": False},
            "shutdown": {"delay": 0, "grace": 1},
            "upstreams": {case.name: case.upstream for case in self.cases},
        }
        try:
            self.proc = SidecarProcess(config, self.workdir)
            await self.proc.start()
            async with aiohttp.ClientSession(trust_env=False) as self.session:
                await self._until_ready()
                results = await asyncio.gather(
                    *(self._exercise(case) for case in self.cases), return_exceptions=True
                )
                problems = [
                    f"{case}: {type(r).__name__}: {r}"
                    for case, r in zip(self.cases, results, strict=True)
                    if isinstance(r, BaseException)
                ]
                problems += await self._still_up()
            assert not problems, "\n".join(problems)
        finally:
            if self.proc is not None:
                await self.proc.kill()

    # -- talking to the sidecar ------------------------------------------------------------

    @property
    def _admin(self) -> str:
        assert self.proc is not None
        return f"http://{self.proc.admin}"

    async def _until_ready(self) -> None:
        assert self.session is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            async with self.session.get(self._admin + "/readyz") as resp:
                if resp.status == 200:
                    return
                missing = await resp.json()
            await asyncio.sleep(0.2)
        raise AssertionError(f"the sidecar never got every first token: {missing}")

    async def probe(self, case: Case) -> Answer:
        assert self.session is not None and self.proc is not None
        p = case.probe
        started = time.monotonic()
        async with self.session.request(
            p.method, p.url, data=p.body, headers=dict(p.headers),
            proxy=f"http://{self.proc.proxy}",
        ) as resp:
            raw = await resp.read()
            try:
                body: Any = json.loads(raw) if raw else None
            except ValueError:
                body = raw[:200]
            return Answer(resp.status, body, resp.headers, time.monotonic() - started)

    async def token(self, case: Case) -> dict[str, Any]:
        """The upstream's token state in ``/status``."""
        assert self.session is not None
        async with self.session.get(self._admin + "/status") as resp:
            state: dict[str, Any] = (await resp.json())["upstreams"][case.name]["token"]
            return state

    def failures_since(self, case: Case, wall: float) -> list[dict[str, Any]]:
        """The sidecar's ``token_fetch_failed`` events for the case's upstream since ``wall``."""
        assert self.proc is not None
        return [
            line for line in self.proc.lines
            if line.get("event") == "token_fetch_failed" and line.get("upstream") == case.name
            and datetime.fromisoformat(line["ts"]).timestamp() >= wall
        ]

    async def until(
        self, check: Callable[[], Awaitable[bool]], timeout: float, what: str
    ) -> None:
        deadline = time.monotonic() + timeout
        while not await check():
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout:g} s for {what}")
            await asyncio.sleep(0.1)

    # -- a case ----------------------------------------------------------------------------

    async def _exercise(self, case: Case) -> None:
        first = await self.probe(case)
        assert first.status in case.probe.ok, f"not served before the fault: {first}"
        armed, armed_wall = time.monotonic(), time.time()
        await case.idp.arm(case.fault)
        try:
            if case.fault.outage:
                await self._outage(case, armed, armed_wall)
            else:
                await self._coping(case, armed, armed_wall)
        finally:
            await case.idp.disarm()
        # Recovers by itself once the IdP is healthy again.
        recovered: list[Answer] = []

        async def served() -> bool:
            recovered.append(await self.probe(case))
            return recovered[-1].status in case.probe.ok

        await self.until(served, BACKOFF_CAP + 2 * IDP_TIMEOUT + 4, "recovery")
        last: dict[str, Any] = {}

        async def healthy() -> bool:
            # Tokens live a few seconds here: the check may fall in a token's last second,
            # while its renewal is under way (state none, no failure); that is not a fault.
            last.update(await self.token(case))
            return last["state"] == "valid" and last["consecutive_failures"] == 0

        try:
            await self.until(healthy, 5, "a valid token after recovery")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last: {last}") from None

    async def _outage(self, case: Case, armed: float, armed_wall: float) -> None:
        fault = case.fault

        async def renewal_failing() -> bool:
            if case.idp.faulted:
                return True
            return bool((await self.token(case))["consecutive_failures"])

        # Renewals now fail, and the token in hand keeps being used for as long as it is valid
        # (less its last second, and a little slack for the probe's own round trip).
        held = await self.token(case)
        usable_until = time.monotonic() + held["expires_in"] - 1.0 - 0.4
        await self.until(renewal_failing, TTL, "a renewal to meet the fault")
        used = 0
        while used == 0 or time.monotonic() < usable_until:
            during = await self.probe(case)
            if not (fault.revokes and self._refused(case, during)):
                assert during.status in case.probe.ok, (
                    f"the still-valid token was not used ({used} times it was): {during}"
                )
            used += 1
            await asyncio.sleep(0.2)

        async def expired() -> bool:
            return (await self.token(case))["state"] != "valid"

        await self.until(expired, TTL + 2, "the token to expire")
        # No valid token: each request gets a fast 503 naming the upstream and the reason.
        for _ in range(3):
            refused = await self.probe(case)
            assert self._refused(case, refused), f"expected a fast 503 naming {case}: {refused}"
            await asyncio.sleep(0.5)
        self._check_backoff(case, armed, armed_wall)

    @staticmethod
    def _refused(case: Case, answer: Answer) -> bool:
        """A 503 JSON, fast, naming the upstream and the fault's reason, with Retry-After."""
        body = answer.body
        return (
            answer.status == 503 and isinstance(body, dict) and body.get("error") == "no_token"
            and body.get("upstream") == case.name and case.fault.reason in body.get("message", "")
            and answer.took < TOKEN_WAIT + 1.0 and int(answer.headers.get("Retry-After", 0)) >= 1
        )

    def _check_backoff(self, case: Case, armed: float, armed_wall: float) -> None:
        window = time.monotonic() - armed
        failures = self.failures_since(case, armed_wall)
        # One attempt per renewal step, however the IdP fails: no tight loop.
        bound = window / 1.2 + 3
        assert 1 <= len(failures) <= bound, (len(failures), round(window, 1))
        calls = len(case.idp.faulted_since(armed))
        assert calls <= 2 * bound, f"{calls} IdP calls in {window:.1f} s"  # a refresh + a login
        pauses = [float(f["retry_in"]) for f in failures]
        if len(pauses) >= 4:
            # The pause doubles past the 0.5 s floor, up to the cap.
            assert max(pauses) >= min(1.2, 0.8 * case.fault.backoff_cap), pauses
        if case.fault.min_retry:
            assert min(pauses) >= case.fault.min_retry, f"Retry-After not honoured: {pauses}"

    async def _coping(self, case: Case, armed: float, armed_wall: float) -> None:
        fault = case.fault
        end = armed + 1.5 * TTL + 1  # past the old token's expiry, and a renewal or two
        refused: list[Answer] = []
        served = 0
        while time.monotonic() < end:
            answer = await self.probe(case)
            if answer.status in case.probe.ok:
                served += 1
            else:
                refused.append(answer)
            await asyncio.sleep(0.3)
        assert not refused, f"{len(refused)} of {served + len(refused)} failed: {refused[:3]}"
        assert case.idp.faulted, "no call met the fault"
        assert not self.failures_since(case, armed_wall), self.failures_since(case, armed_wall)
        window = time.monotonic() - armed
        calls = case.idp.calls_since(armed)
        assert calls <= 2 * (window / 1.2 + 3), f"{calls} IdP calls in {window:.1f} s"

        async def valid() -> bool:  # a renewal may be under way at this very moment
            return (await self.token(case))["state"] == "valid"

        await self.until(valid, 5, "a valid token after the fault")
        token = await self.token(case)
        assert token["state"] == "valid", token
        if fault.max_expires_in is not None:
            assert 0 < token["expires_in"] <= fault.max_expires_in, token
        if fault.grant == "refresh_token":
            # A rejected refresh token is never presented again, unless a login handed it out
            # anew (WSO2 hands back the same pair while it lives); a full login replaces it.
            last_sent: dict[str, float] = {}
            for sent, value in case.idp.refresh_tokens:
                before = last_sent.get(value)
                if before is not None:
                    assert any(before < t < sent and v == value
                               for t, v in case.idp.issued_refresh), "a rejected one sent again"
                last_sent[value] = sent
            assert case.idp.calls_since(armed, "refresh_token") >= 1
            assert case.idp.calls_since(armed) > case.idp.calls_since(armed, "refresh_token")

    async def _still_up(self) -> list[str]:
        assert self.proc is not None and self.proc.proc is not None and self.session is not None
        problems = []
        if self.proc.proc.returncode is not None:
            problems.append(f"the sidecar exited with {self.proc.proc.returncode}")
            return problems
        async with self.session.get(self._admin + "/healthz") as resp:
            if resp.status != 200:
                problems.append(f"/healthz answered {resp.status}")
        crashed = [
            line for line in self.proc.lines
            if line.get("event") in ("token_loop_error", "token_attempt_crashed")
        ]
        if crashed:
            problems.append(f"the token loop crashed: {crashed[:3]}")
        if any("Traceback" in raw for raw in self.proc.raw):
            problems.append("a traceback in the sidecar's output")
        return problems
