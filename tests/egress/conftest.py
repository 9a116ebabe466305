"""A real Squid for the egress tests, one for the session: each test reads only the access
log lines written after it began."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.egress.squid import PASSWORD, USER, Squid, available


@pytest.fixture(scope="session")
def squid() -> Iterator[Squid]:
    if not available():
        pytest.skip("squid not installed (make system-deps installs it)")
    proxy = Squid()
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()
        proxy.remove()


def egress_block(
    url: str, tmp_path: Path, password: str = PASSWORD, **extra: Any
) -> dict[str, Any]:
    """An ``egress_proxy`` block with the password in a file, as a Secret mount gives it."""
    secret = tmp_path / "egress-proxy-password"
    secret.write_text(password + "\n")
    return {"url": url, "username": USER, "password_file": str(secret), **extra}
