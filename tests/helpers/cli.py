"""``sidecar`` subcommands as a user runs them: a real subprocess with a controlled
environment (no inherited variables), its output captured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import sidecar

REPO_ROOT = Path(sidecar.__file__).resolve().parent.parent


def run_sidecar(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {
        "PATH": os.defpath,
        "HOME": str(tmp_path),
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONIOENCODING": "utf-8",
        "LC_ALL": "C.UTF-8",
    }
    environ.update(env or {})
    result = subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def check(
    tmp_path: Path, path: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``sidecar check --config path``."""
    return run_sidecar(tmp_path, "check", "--config", str(path), env=env)
