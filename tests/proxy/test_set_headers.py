"""``set_headers`` replace what the app sent; ``headers`` only fill in what it did not."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.config.models import HeaderDate
from sidecar.proxy.headers import upstream_headers


def test_set_headers_replace_every_copy_the_app_sent_and_headers_do_not() -> None:
    incoming = CIMultiDictProxy(CIMultiDict([
        ("Accept", "application/json"), ("accept", "text/html"), ("X-Channel", "app"),
    ]))
    out = upstream_headers(
        incoming, {"X-Channel": "sidecar", "X-Id": "{uuid}"}, HeaderDate(),
        replaced={"Accept": "*/*", "X-Desk": "Касса №1"},
    )
    assert out.getall("Accept") == ["*/*"]
    assert out["X-Channel"] == "app"  # headers: added only when absent
    assert len(out["X-Id"]) == 36
    assert out["X-Desk"].encode("latin-1").decode() == "Касса №1"  # sent as UTF-8 bytes


def test_without_set_headers_the_app_accept_passes() -> None:
    incoming = CIMultiDictProxy(CIMultiDict([("Accept", "application/json")]))
    assert upstream_headers(incoming, {}, HeaderDate())["Accept"] == "application/json"
