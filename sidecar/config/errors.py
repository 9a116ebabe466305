"""The one exception a bad configuration raises."""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration the sidecar cannot run with; ``problems`` are one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
