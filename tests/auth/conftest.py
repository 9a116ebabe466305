"""Fixtures of the auth tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sidecar.auth.manager import TokenManager


@pytest.fixture
async def managers() -> AsyncIterator[list[TokenManager]]:
    """Token managers a test made (with ``test_manager.manager``), closed after it."""
    made: list[TokenManager] = []
    yield made
    for m in made:
        await m.close()
