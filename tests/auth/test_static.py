"""Static tokens: from config, or from a file re-read when Kubernetes swaps the Secret's symlink."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar.auth import static
from sidecar.auth.base import NoToken
from sidecar.auth.static import StaticToken
from sidecar.config.auth import StaticAuth


async def test_inline_token() -> None:
    source = StaticToken("u", StaticAuth(type="static", token="abc123"))
    await source.start()
    assert (await source.get()).value == "abc123"
    assert source.ready


async def test_file_token_follows_symlink_swap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(static, "RECHECK_INTERVAL", 0.0)
    # Kubernetes layout: ..data -> ..2026_v1/, token -> ..data/token
    for version, value in (("v1", "first-token"), ("v2", "second-token")):
        (tmp_path / version).mkdir()
        (tmp_path / version / "token").write_text(value + "\n")
    (tmp_path / "..data").symlink_to("v1")
    (tmp_path / "token").symlink_to("..data/token")
    source = StaticToken("u", StaticAuth(type="static", token_file=tmp_path / "token"))
    await source.start()
    assert (await source.get()).value == "first-token"

    (tmp_path / "..data_tmp").symlink_to("v2")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # atomic swap, as the kubelet does
    assert (await source.get()).value == "second-token"


async def test_empty_file_means_no_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(static, "RECHECK_INTERVAL", 0.0)
    path = tmp_path / "token"
    path.write_text("t0k3n")
    source = StaticToken("u", StaticAuth(type="static", token_file=path))
    await source.start()
    old = await source.get()
    path.write_text("")
    with pytest.raises(NoToken) as caught:
        await source.get()
    assert "empty" in caught.value.reason
    path.write_text("n3w-t0k3n")
    source.invalidate(old)
    assert (await source.get()).value == "n3w-t0k3n"
