"""The Dockerfile makes no fixed-UID assumption (OpenShift runs images under an arbitrary UID
in group 0). `make image-check` runs the built image that way; this checks the text, which
needs no container runtime."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def final_stage() -> str:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    return re.split(r"^FROM ", text, flags=re.M)[-1]


def test_the_image_runs_under_any_uid() -> None:
    stage = final_stage()
    # HOME from ENV, not from a passwd entry an arbitrary UID does not have.
    assert re.search(r"^\s+HOME=/tmp\b", stage, re.M), "ENV HOME=/tmp in the final stage"
    # Nothing is handed to uid 10001 alone: what the sidecar reads is root-owned and readable
    # by all, and the only path it writes is /tmp (1777).
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "chown" not in text and "--chown" not in text
    assert "chmod -R go+rX,go-w /opt/venv" in text
    assert re.search(r"^USER \d+:\d+$", stage, re.M), "a numeric USER (runAsNonRoot checks it)"
    script = (ROOT / "scripts" / "image-check.sh").read_text(encoding="utf-8")
    assert re.search(r'^ANY_UID=\d+:0\b', script, re.M)
    assert '--user "$ANY_UID"' in script
