"""The optional compiled hot path (everything else is in pyproject.toml).

Cython compiles the modules listed in ``sidecar/hotpath.py`` from their ``.py`` files, as
they are, into extension modules installed beside them. Without Cython or a working C
compiler, or with ``SIDECAR_NO_COMPILE=1``, the pure package is installed, one line says so
(``pip install -v`` shows it), and the build never fails for that reason.
"""

from __future__ import annotations

import runpy
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from types import SimpleNamespace

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

# Read as a file, not imported: the package's dependencies may be absent at build time.
hotpath = SimpleNamespace(**runpy.run_path(str(Path(__file__).parent / "sidecar" / "hotpath.py")))

# The modules keep their Python semantics: annotations are not C types (a `float` argument
# would become a C double, a `bytes` one would refuse a subclass), so both paths behave alike.
DIRECTIVES = {"language_level": 3, "annotation_typing": False, "binding": True}

_pure_reason = ""  # why this build installs the pure package, said once by a build command


def _say(message: str) -> None:
    print(f"authsidecar: {message}", file=sys.stderr, flush=True)


def _extensions() -> list[Extension]:
    global _pure_reason
    if hotpath.flag(hotpath.NO_COMPILE_ENV):
        _pure_reason = f"{hotpath.NO_COMPILE_ENV} is set"
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        _pure_reason = "Cython is not installed"
        return []
    modules = [
        Extension(name, [str(Path(*name.split(".")).with_suffix(".py"))])
        for name in hotpath.MODULES
    ]
    # The generated C stays under build/, out of the package.
    return cythonize(
        modules, compiler_directives=DIRECTIVES, build_dir="build/cython", quiet=True
    )


class BuildPy(build_py):
    """Every build copies the .py files: the place to say once that they are all it ships."""

    def run(self) -> None:
        super().run()
        if _pure_reason:
            _say(f"{_pure_reason}: installing the pure-Python package")


class OptionalBuildExt(build_ext):
    """build_ext that falls back to the pure package when the C compiler is missing or fails."""

    def run(self) -> None:
        global _pure_reason
        inplace = self.inplace
        if self.extensions:
            try:
                super().run()
                _say(f"compiled the hot path: {len(self.extensions)} modules")
                return
            except Exception as exc:  # no compiler, a failing one, missing Python headers
                text = str(exc).strip().splitlines()
                _pure_reason = f"compiling the hot path failed ({text[-1] if text else exc!r})"
                self._remove_built(in_place=False)  # no half-compiled wheel
                self.extensions = []
                self.distribution.ext_modules = []
        if inplace:  # `build_ext --inplace`: what an earlier build left beside the .py goes
            self._remove_built(in_place=True)
            _say(f"{_pure_reason}: the checkout runs the pure-Python package")

    def _remove_built(self, *, in_place: bool) -> None:
        for name in hotpath.MODULES:
            source = Path(*name.split("."))
            where = source.parent if in_place else Path(self.build_lib, source.parent)
            for suffix in EXTENSION_SUFFIXES:
                (where / (source.name + suffix)).unlink(missing_ok=True)

    def get_outputs(self) -> list[str]:
        return super().get_outputs() if self.extensions else []


setup(
    ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt, "build_py": BuildPy}
)
