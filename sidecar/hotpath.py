"""The compiled hot path: which modules ``setup.py`` compiles with Cython, and which run so.

The modules are compiled as they are, from their ``.py`` files, into extension modules beside
them; the ``.py`` files stay the fallback. Python imports an extension module before a source
file of the same name, unless ``SIDECAR_PURE_PYTHON=1`` (see ``sidecar/__init__.py``).

``setup.py`` reads this file with ``runpy`` before the package is installed: standard library
imports only.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where sidecar/ is

PURE_ENV = "SIDECAR_PURE_PYTHON"  # 1: import the .py files even where compiled ones exist
NO_COMPILE_ENV = "SIDECAR_NO_COMPILE"  # 1 at build time: install the pure package only

# Chosen by callgrind (tests/bench/instructions.py), one module compiled at a time: each of
# these cuts the instructions of a proxied GET. The protocols, the exchange and the pipeline
# cost more compiled (up to 3 % more each): their code is attribute access, which CPython 3.11's
# specialising interpreter does faster than Cython's generic lookups, so they stay .py.
MODULES: tuple[str, ...] = (
    "sidecar.http1.wire",
    "sidecar.proxy.headers",
    "sidecar.proxy.router",
    "sidecar.logs",  # the access line
)


def flag(name: str) -> bool:
    """An on/off environment variable: set and not empty or ``0``."""
    return os.environ.get(name, "") not in ("", "0")


def stale_modules() -> list[str]:
    """In a source checkout (``setup.py`` beside the package), the hot modules whose ``.py``
    changed after their extension module was built: those must import from the ``.py``
    until ``make compiled`` rebuilds them. An installed package is never checked."""
    if not os.path.exists(os.path.join(ROOT, "setup.py")):
        return []
    stale = []
    for name in MODULES:
        source = os.path.join(ROOT, *name.split(".")) + ".py"
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            built = source[: -len(".py")] + suffix
            if os.path.exists(built) and os.path.getmtime(built) < os.path.getmtime(source):
                stale.append(name)
                break
    return stale


def compiled_modules() -> list[str]:
    """The hot modules that import from an extension module in this process."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    found = []
    for name in MODULES:
        spec = importlib.util.find_spec(name)
        if spec is not None and (spec.origin or "").endswith(suffixes):
            found.append(name)
    return found


def describe() -> str:
    """``compiled (N modules)`` or ``pure Python``, for ``--version``, the log and /status."""
    if flag(PURE_ENV):
        return f"pure Python ({PURE_ENV}=1)"
    count, stale = len(compiled_modules()), stale_modules()
    text = "pure Python" if count == 0 else f"compiled ({count} of {len(MODULES)} modules)"
    if count == len(MODULES):
        text = f"compiled ({count} modules)"
    if stale:
        text += f"; from source, newer than their build: {', '.join(stale)} (make compiled)"
    return text
