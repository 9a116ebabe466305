"""setup.py's compiled hot path never fails a build: without Cython, without a C compiler, or
with SIDECAR_NO_COMPILE=1 it leaves the pure package and says so in one line.

Each test builds a tree of its own: the real setup.py and sidecar/hotpath.py, with the list
of modules cut to one small module so that a build takes seconds.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HAS_CYTHON = importlib.util.find_spec("Cython") is not None
needs_cython = pytest.mark.skipif(
    not HAS_CYTHON, reason="Cython is not installed here (pip install -e '.[dev]')"
)
needs_cc = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler (cc)"
)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "sidecar").mkdir()
    shutil.copy(ROOT / "setup.py", tmp_path / "setup.py")
    (tmp_path / "sidecar" / "__init__.py").write_text("")
    (tmp_path / "sidecar" / "tiny.py").write_text("def answer() -> int:\n    return 42\n")
    text, count = re.subn(
        r"MODULES: tuple\[str, \.\.\.\] = \(.*?\n\)\n",
        'MODULES: tuple[str, ...] = ("sidecar.tiny",)\n',
        (ROOT / "sidecar" / "hotpath.py").read_text(),
        flags=re.DOTALL,
    )
    assert count == 1, "the MODULES tuple in sidecar/hotpath.py changed shape"
    (tmp_path / "sidecar" / "hotpath.py").write_text(text)
    return tmp_path


def _build(tree: Path, *, prelude: str = "pass", **env: str) -> subprocess.CompletedProcess[str]:
    """``setup.py -q build_ext --inplace`` in ``tree``; ``prelude`` runs first."""
    code = (
        f"import runpy, sys; {prelude}; "
        "sys.argv = ['setup.py', '-q', 'build_ext', '--inplace']; "
        "runpy.run_path('setup.py', run_name='__main__')"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=tree, capture_output=True, text=True,
        env={**environ, **env}, timeout=240,
    )


def _built(tree: Path) -> list[Path]:
    return [p for p in (tree / "sidecar").iterdir() if p.name.endswith(tuple(EXTENSION_SUFFIXES))]


def _said(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.startswith("authsidecar: ")]


def _leftover(tree: Path) -> Path:
    """An extension module an earlier build left beside tiny.py."""
    old = tree / "sidecar" / f"tiny{EXTENSION_SUFFIXES[0]}"
    old.write_bytes(b"an earlier build")
    return old


def test_no_compile_builds_the_pure_package(tree: Path) -> None:
    old = _leftover(tree)
    done = _build(tree, SIDECAR_NO_COMPILE="1")
    assert done.returncode == 0, done.stderr
    assert _said(done) == [
        "authsidecar: SIDECAR_NO_COMPILE is set: the checkout runs the pure-Python package"
    ]
    assert not old.exists() and _built(tree) == []


def test_without_cython_the_build_is_pure(tree: Path) -> None:
    done = _build(tree, prelude="sys.modules['Cython'] = None")  # import Cython fails
    assert done.returncode == 0, done.stderr
    assert _said(done) == [
        "authsidecar: Cython is not installed: the checkout runs the pure-Python package"
    ]
    assert _built(tree) == []


@needs_cython
def test_without_a_c_compiler_the_build_is_pure(tree: Path) -> None:
    old = _leftover(tree)
    done = _build(tree, CC=str(tree / "no-such-cc"))
    assert done.returncode == 0, done.stderr
    [line] = _said(done)
    assert line.startswith("authsidecar: compiling the hot path failed (")
    assert line.endswith("): the checkout runs the pure-Python package")
    assert not old.exists() and _built(tree) == []


@needs_cython
@needs_cc
def test_with_cython_and_a_compiler_the_module_is_compiled(tree: Path) -> None:
    done = _build(tree)
    assert done.returncode == 0, done.stderr
    assert _said(done) == ["authsidecar: compiled the hot path: 1 modules"]
    [built] = _built(tree)
    code = "import sidecar.tiny as t; print(t.__file__, t.answer())"
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=tree, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(tree)},
    )
    assert run.stdout.split() == [str(built), "42"]
