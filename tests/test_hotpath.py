"""The compiled hot path at run time: which files the hot modules load from, the
``SIDECAR_PURE_PYTHON`` switch, a checkout's guard against a stale build, and what
``sidecar --version`` says."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

import sidecar
from sidecar import hotpath

ROOT = Path(__file__).resolve().parents[1]
SHOW_FILES = (
    "import importlib, sidecar.hotpath as h; "
    "print('\\n'.join(importlib.import_module(m).__file__ for m in h.MODULES))"
)
NOT_BUILT = (
    "the hot path is not compiled in this checkout (no Cython or C compiler, "
    "SIDECAR_NO_COMPILE=1, or edited since the build): `make compiled` builds it"
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != hotpath.PURE_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return {**env, **extra}


def _run(code: str, **extra: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(**extra),
        cwd=ROOT, timeout=60, check=True,
    )
    return done.stdout


def _current_builds() -> int:
    """The hot modules with an extension module beside their .py that is not older."""
    stale = hotpath.stale_modules()
    return sum(
        name not in stale
        and any((ROOT / Path(*name.split("."))).with_name(name.rpartition(".")[2] + suffix)
                .exists() for suffix in EXTENSION_SUFFIXES)
        for name in hotpath.MODULES
    )


def _built() -> bool:
    return _current_builds() == len(hotpath.MODULES)


def test_hot_modules_load_as_this_process_was_told() -> None:
    files = [importlib.import_module(name).__file__ or "" for name in hotpath.MODULES]
    if hotpath.flag(hotpath.PURE_ENV):  # the pure pass of `make test`
        assert all(f.endswith(".py") for f in files), files
        return
    if not _built():
        pytest.skip(NOT_BUILT)
    assert all(f.endswith(tuple(EXTENSION_SUFFIXES)) for f in files), files


def test_pure_python_switch_loads_every_hot_module_from_its_source() -> None:
    files = _run(SHOW_FILES, SIDECAR_PURE_PYTHON="1").split()
    assert len(files) == len(hotpath.MODULES)
    assert all(f.endswith(".py") for f in files), files


def test_compiled_modules_load_without_the_switch() -> None:
    if not _built():
        pytest.skip(NOT_BUILT)
    files = _run(SHOW_FILES, SIDECAR_PURE_PYTHON="0").split()
    assert all(f.endswith(tuple(EXTENSION_SUFFIXES)) for f in files), files


def test_version_says_which_hot_path_runs() -> None:
    version = [sys.executable, "-m", "sidecar", "--version"]
    pure = subprocess.run(
        version, capture_output=True, text=True, env=_env(SIDECAR_PURE_PYTHON="1"), timeout=60,
    )
    assert pure.returncode == 0
    assert pure.stdout.splitlines() == [
        f"authsidecar {sidecar.__version__}", "hot path: pure Python (SIDECAR_PURE_PYTHON=1)",
    ]
    default = subprocess.run(version, capture_output=True, text=True, env=_env(), timeout=60)
    built, every = _current_builds(), len(hotpath.MODULES)
    expected = {0: "pure Python", every: f"compiled ({every} modules)"}.get(
        built, f"compiled ({built} of {every} modules)"
    )
    assert default.stdout.splitlines()[1].startswith(f"hot path: {expected}")


def _checkout(root: Path, *, setup_py: bool) -> tuple[Path, Path]:
    """A fake tree holding sidecar/logs.py and a built module beside it."""
    (root / "sidecar").mkdir(parents=True)
    if setup_py:
        (root / "setup.py").write_text("")
    source = root / "sidecar" / "logs.py"
    built = root / "sidecar" / f"logs{EXTENSION_SUFFIXES[0]}"
    source.write_text("")
    built.write_bytes(b"")
    return source, built


def test_a_build_older_than_its_source_is_stale_in_a_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, built = _checkout(tmp_path, setup_py=True)
    monkeypatch.setattr(hotpath, "ROOT", str(tmp_path))
    os.utime(source, (1_000_000, 1_000_000))
    os.utime(built, (2_000_000, 2_000_000))
    assert hotpath.stale_modules() == []
    os.utime(source, (3_000_000, 3_000_000))  # edited after the build
    assert hotpath.stale_modules() == ["sidecar.logs"]


def test_an_installed_package_is_never_called_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, built = _checkout(tmp_path, setup_py=False)  # site-packages: no setup.py
    monkeypatch.setattr(hotpath, "ROOT", str(tmp_path))
    os.utime(built, (1_000_000, 1_000_000))
    os.utime(source, (3_000_000, 3_000_000))
    assert hotpath.stale_modules() == []


def test_source_finder_takes_only_the_names_it_is_given() -> None:
    import sidecar.http1

    finder = sidecar._SourceOnly({"sidecar.http1.wire"})
    spec = finder.find_spec("sidecar.http1.wire", list(sidecar.http1.__path__))
    assert spec is not None and spec.origin == str(ROOT / "sidecar" / "http1" / "wire.py")
    assert finder.find_spec("sidecar.http1.client", list(sidecar.http1.__path__)) is None
    assert finder.find_spec("json", None) is None
