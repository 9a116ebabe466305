"""pydantic-settings sources for the config: the YAML file and ``SIDECAR_…`` variables.

Both are the library's own sources, adapted only where the sidecar's documented behaviour
differs: errors that name the file (and never quote its text), YAML flow for lists and maps
in variables, and upstream names with dashes reached from variable names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, YamlConfigSettingsSource

from sidecar.config.errors import ConfigError
from sidecar.hotpath import NO_COMPILE_ENV, PURE_ENV

if TYPE_CHECKING:
    from pydantic_settings.sources import ConfigFileSourceType

ENV_CONFIG_PATH = "SIDECAR_CONFIG"
# Variables with the prefix that are not config fields: the file's path, and the switches of
# the compiled hot path (sidecar/hotpath.py).
NOT_OVERRIDES = frozenset({ENV_CONFIG_PATH, PURE_ENV, NO_COMPILE_ENV})


class ConfigFile(YamlConfigSettingsSource):
    """The one YAML config file. Every way it can fail is a :class:`ConfigError` naming it."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        self.path = path
        super().__init__(settings_cls, yaml_file=path, yaml_file_encoding="utf-8")

    def _read_files(
        self, files: ConfigFileSourceType | None, deep_merge: bool = False
    ) -> dict[str, Any]:
        # The library skips a file that does not exist (optional config files); this one is
        # required, and a missing one must say so rather than "upstreams: is required".
        return self._read_file(self.path)

    def _read_file(self, path: Path | Any) -> dict[str, Any]:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError([f"config file not found: {path}"]) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                [f"{path}: not UTF-8 text (bad byte at offset {exc.start})"]
            ) from None
        except OSError as exc:
            raise ConfigError([f"cannot read config file {path}: {exc.strerror}"]) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            tab = _tab_at(text, mark)
            if tab is not None:
                line, column = tab
                raise ConfigError([
                    f"{path}: tab character at line {line}, column {column}: "
                    "YAML indents with spaces"
                ]) from None
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            reason = getattr(exc, "problem", None) or "syntax error"
            # The parser quotes the text it choked on, which may be an unquoted password: cut it.
            reason = re.sub(r"'[^']*'", "'…'", reason)
            raise ConfigError([f"{path}: not valid YAML{where}: {reason}"]) from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(
                [f"{path}: the top level must be a mapping (listen:, upstreams:, ...)"]
            )
        check_top_level_keys(data)
        return data


def _tab_at(text: str, mark: Any) -> tuple[int, int] | None:
    """Where a tab broke the YAML (1-based line and column): at the parser's mark, else the
    first tab in a line's indentation. None when tabs are not the cause."""
    lines = text.splitlines()
    if mark is not None and mark.line < len(lines):
        line = lines[mark.line]
        if mark.column < len(line) and line[mark.column] == "\t":
            return mark.line + 1, mark.column + 1
    for number, line in enumerate(lines):
        indent = len(line) - len(line.lstrip(" \t"))
        if "\t" in line[:indent]:
            return number + 1, line.index("\t") + 1
    return None


def check_top_level_keys(data: Mapping[Any, Any]) -> None:
    """Keys that are not names (``8080: proxy``) would break the sources' key matching."""
    odd = [repr(k) for k in data if not isinstance(k, str)]
    if odd:
        raise ConfigError([f"{k}: unknown field (top-level keys are names)" for k in odd])


class EnvOverrides(EnvSettingsSource):
    """``SIDECAR_<SECTION>__<FIELD>`` variables, by the library's env source (prefix, ``__``
    nesting, names matched ignoring case, a secret never decoded), with four adaptations:

    * the environment is the one given, not ``os.environ`` (the reloader keeps its own copy,
      tests pass theirs);
    * lists and maps are YAML flow (``[a, b]``, ``{type: static}``), as documented, where the
      library expects JSON;
    * a key that names something in the file matches it ignoring case with ``_`` for ``-``:
      a variable name cannot hold ``-``, and the library would add an upstream ``moex_ntb``
      next to the file's ``moex-ntb`` instead of overriding it;
    * a variable replaces what the file holds at its path, whole: the library would merge a
      map given in a variable into the file's map, keeping keys the variable left out. So
      the file's value at each variable's path is removed from ``file_data`` (in place).

    A variable for a section that does not exist is kept, so that validation calls it an
    unknown field, as it does for the file: a typo never silently does nothing.
    """

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        environ: Mapping[str, str],
        file_data: dict[str, Any],
    ) -> None:
        self._environ = {k: v for k, v in environ.items() if k not in NOT_OVERRIDES}
        self._file_keys = _keys_of(file_data)  # before the overridden values go
        super().__init__(settings_cls, case_sensitive=False)
        for path in self._paths():
            _remove(file_data, path)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # The prefix is matched exactly, as it always was ("sidecar_x" is someone else's);
        # the rest ignoring case, by the library.
        return {n.lower(): v for n, v in self._environ.items() if n.startswith(self.env_prefix)}

    def variables(self) -> dict[str, list[str]]:
        """Each ``SIDECAR_…`` variable as it is spelled, with the key path it names: errors
        caused by a variable name it."""
        prefix = self.env_prefix
        delimiter = self.env_nested_delimiter or "__"
        return {
            name: [part for part in name[len(prefix) :].lower().split(delimiter) if part]
            for name in self._environ
            if name.startswith(prefix)
        }

    def _paths(self) -> list[list[str]]:
        """The key path each prefixed variable names (``sidecar_a__b`` -> ``[a, b]``)."""
        prefix = self.env_prefix.lower()
        delimiter = self.env_nested_delimiter or "__"
        return [
            [part for part in name[len(prefix) :].split(delimiter) if part]
            for name in self.env_vars
        ]

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        try:
            return yaml.safe_load(value)
        except yaml.YAMLError:
            return value  # validation then names the field and what it expects

    def __call__(self) -> dict[str, Any]:
        data = super().__call__()
        prefix = self.env_prefix.lower()
        for name, value in self.env_vars.items():  # all prefixed (see _load_env_vars)
            section = name[len(prefix) :].split(self.env_nested_delimiter or "__")[0]
            if section and section not in self.settings_cls.model_fields:
                data.setdefault(section, value)
        return _match_keys(data, self._file_keys)


def norm_key(key: object) -> str:
    """A key as a variable name can spell it: lower case, ``_`` for ``-``."""
    return str(key).lower().replace("-", "_")


def _keys_of(node: Any) -> dict[Any, Any] | None:
    """The nested keys of config data, without the values."""
    return {k: _keys_of(v) for k, v in node.items()} if isinstance(node, Mapping) else None


def _find(node: Mapping[Any, Any], key: str) -> Any:
    """The key of ``node`` that ``key`` (from a variable name) stands for, if any."""
    if key in node:
        return key
    return next((k for k in node if norm_key(k) == norm_key(key)), None)


def _match_keys(overrides: dict[str, Any], file_keys: Any) -> dict[str, Any]:
    """``overrides`` with each key renamed to the file's key it stands for, at every level."""
    if not isinstance(file_keys, Mapping):
        return overrides
    matched: dict[str, Any] = {}
    for key, value in overrides.items():
        name = _find(file_keys, key)
        name = key if name is None else name
        if isinstance(value, dict):
            value = _match_keys(value, file_keys.get(name))
        matched[name] = value
    return matched


def _remove(data: dict[Any, Any], path: list[str]) -> None:
    node: Any = data
    for part in path[:-1]:
        key = _find(node, part)
        if key is None or not isinstance(node[key], dict):
            return
        node = node[key]
    key = _find(node, path[-1]) if path else None
    if key is not None:
        del node[key]
