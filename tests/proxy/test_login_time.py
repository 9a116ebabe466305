"""``{login_time}``: when the token a request carries was obtained, in the header_date
format; the same for every request with that token, and the new token's on a replay."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.app import Sidecar
from sidecar.config.models import HeaderDate
from sidecar.proxy.headers import login_time_headers, upstream_headers
from tests.helpers.sidecars import Kisc, SidecarFactory, proxy_url

MESSAGES = "http://ax.kisc.kz/etsfo/1.0.0/messages/"
LOGIN = datetime.fromisoformat("2026-11-22T10:46:31+00:00").timestamp()


def test_login_time_is_written_as_header_date_says() -> None:
    templates = {"x-fapi-auth-date": "{login_time}", "x-now": "{now}"}
    none = CIMultiDictProxy(CIMultiDict[str]())
    kz = upstream_headers(none, templates, HeaderDate(utc_offset="+06:00"), LOGIN)
    assert kz["x-fapi-auth-date"] == "2026-11-22T16:46:31+06:00"
    fapi = upstream_headers(none, templates, HeaderDate(format="http"), LOGIN)
    assert fapi["x-fapi-auth-date"] == "Sun, 22 Nov 2026 10:46:31 GMT"
    assert fapi["x-now"] != fapi["x-fapi-auth-date"]  # {now} stays the time of the request


def test_a_replay_carries_the_new_tokens_login_time_but_the_apps_own_header_stays() -> None:
    templates = {"x-fapi-auth-date": "{login_time}", "x-other": "{login_time}"}
    incoming = CIMultiDictProxy(CIMultiDict([("X-Other", "the app's")]))
    date = HeaderDate()
    out = upstream_headers(incoming, templates, date, LOGIN)
    login_time_headers(out, incoming, templates, date, LOGIN + 3600)
    assert out["x-fapi-auth-date"] == "2026-11-22T11:46:31+00:00"
    assert out.getall("x-other") == ["the app's"]


async def _post(session: aiohttp.ClientSession, sidecar: Sidecar, key: str) -> int:
    async with session.post(MESSAGES, data=b"<Envelope/>", proxy=proxy_url(sidecar),
                            headers={"x-idempotency-key": key}) as resp:
        await resp.read()
        return resp.status


async def test_kisc_requests_carry_the_login_time_not_the_request_time(
    kisc: Kisc, make_sidecar: SidecarFactory, kisc_config: dict[str, object]
) -> None:
    kisc_config["headers"] = {"x-fapi-auth-date": "{login_time}"}
    before = time.time()
    sidecar = await make_sidecar(upstreams={"kisc": kisc_config})
    async with aiohttp.ClientSession() as session:
        assert await _post(session, sidecar, "L-1") == 202
        first = kisc.gateway.stats()["last_request"]["headers"]["x-fapi-auth-date"]
        await asyncio.sleep(1.1)  # a {now} would be a second later
        assert await _post(session, sidecar, "L-2") == 202
        second = kisc.gateway.stats()["last_request"]["headers"]["x-fapi-auth-date"]
        assert first == second
        assert before - 1 <= datetime.fromisoformat(first).timestamp() <= time.time()

        await asyncio.sleep(1.1)
        kisc.gateway.expire_tokens()  # 401 fault 900901: a new token, and the replay
        assert await _post(session, sidecar, "L-3") == 202
        replayed = kisc.gateway.stats()["last_request"]["headers"]["x-fapi-auth-date"]
        assert datetime.fromisoformat(replayed) > datetime.fromisoformat(first)
