"""Records at rest: sealed, bound to their credential, readable after a key rotation."""

from __future__ import annotations

import os

from sidecar.store.seal import Sealer


def test_sealed_record_opens_only_under_its_credential_and_a_known_key() -> None:
    old, new = os.urandom(32), os.urandom(32)
    record = {"a": "access-token-value", "r": "refresh-token-value"}
    blob = Sealer([old]).seal(record, "credential-1")
    assert "access-token-value" not in blob and "refresh" not in blob
    assert Sealer([old]).open(blob, "credential-1") == record
    assert Sealer([old]).open(blob, "credential-2") is None  # moved to another key: refused
    assert Sealer([new]).open(blob, "credential-1") is None  # a key never configured
    rotated = Sealer([new, old])  # the new key seals, the old one still opens
    assert rotated.open(blob, "credential-1") == record
    assert Sealer([new]).open(rotated.seal(record, "credential-1"), "credential-1") == record
    assert Sealer([old]).open(blob[:-4] + "AAA=", "credential-1") is None  # tampered
