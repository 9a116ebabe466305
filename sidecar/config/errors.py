"""What a configuration the sidecar cannot run with raises: :class:`ConfigError` when it does
not validate, :class:`SetupError` when a file it names cannot be used."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration the sidecar cannot run with; ``problems`` are one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class SetupError(Exception):
    """A file the config names cannot be used (certificate, key, bundle); the message names it.

    Found at start-up or on reload; the CLI exits 2 with it, a reload is rejected with it."""
