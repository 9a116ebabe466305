"""authsidecar: an outbound authentication sidecar for MOEX, KISC and MPT APIs."""

import sys
from importlib.machinery import SOURCE_SUFFIXES, FileFinder, ModuleSpec, SourceFileLoader

from sidecar.hotpath import PURE_ENV, flag, stale_modules

__version__ = "0.1.0"


class _SourceOnly:
    """Imports ``sidecar.*`` modules (all, or the names given) from their ``.py`` files, even
    where a compiled one sits beside them: Python would pick the extension module first."""

    def __init__(self, names: set[str] | None) -> None:
        self.names = names

    def find_spec(
        self, name: str, path: list[str] | None = None, target: object = None
    ) -> ModuleSpec | None:
        if not name.startswith("sidecar.") or not path:
            return None
        if self.names is not None and name not in self.names:
            return None
        for entry in path:
            spec = FileFinder(entry, (SourceFileLoader, SOURCE_SUFFIXES)).find_spec(name)
            if spec is not None and spec.loader is not None:
                return spec
        return None  # not a source module: the usual finders decide


# SIDECAR_PURE_PYTHON=1: all of them. Otherwise, in a checkout, the compiled modules older
# than their source (edited since the build): the code as it is now, never a stale build.
if flag(PURE_ENV):
    sys.meta_path.insert(0, _SourceOnly(None))
elif stale := set(stale_modules()):
    sys.meta_path.insert(0, _SourceOnly(stale))
