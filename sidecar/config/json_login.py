"""The blocks of the ``json_login`` auth type: a login (or refresh) request described in
config, where its answer keeps the token, and how it words a failure.

Placeholders such as ``{password}`` stand for secrets in request bodies and headers; which
names exist is decided by the auth block (:class:`sidecar.config.auth.JsonLoginAuth`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from sidecar.config.fields import HttpUrlStr, Model

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
SECRET_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_HEADER_NAME = Annotated[str, Field(pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")]


def _no_line_breaks(value: str) -> str:
    if any(ch in value for ch in "\r\n\0"):
        raise ValueError("header values cannot contain line breaks")
    return value


class LoginRequest(Model):
    """One call to the API's login (or refresh) endpoint. The body is ``json`` or ``form``
    (or none); strings in it and in ``headers`` may hold placeholders."""

    method: Literal["POST", "PUT", "PATCH", "GET"] = "POST"
    url: HttpUrlStr
    json_body: Any = Field(None, alias="json")
    form: dict[str, str] | None = None
    headers: dict[_HEADER_NAME, Annotated[str, AfterValidator(_no_line_breaks)]] = {}

    @model_validator(mode="after")
    def _one_body(self) -> LoginRequest:
        if self.json_body is not None and self.form is not None:
            raise ValueError("give the body as json or as form, not both")
        if self.method == "GET" and (self.json_body is not None or self.form is not None):
            raise ValueError("a GET login has no body: use method POST, or drop json/form")
        return self

    def strings(self) -> Iterator[tuple[str, str]]:
        """(where, text) of every string that may hold a placeholder."""
        yield from _walk("json", self.json_body)
        for key, value in (self.form or {}).items():
            yield f"form.{key}", value
        for key, value in self.headers.items():
            yield f"headers.{key}", value


def _walk(where: str, value: Any) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(f"{where}.{key}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _walk(f"{where}.{index}", item)


def _check_location(value: str) -> str:
    """A JSON pointer (RFC 6901), ``header:<Name>`` or ``cookie:<name>``."""
    kind, sep, name = value.partition(":")
    if sep and kind in ("header", "cookie"):
        if not name.strip():
            raise ValueError(f"{value!r} names no {kind}: write '{kind}:<name>'")
        return value
    if value.startswith("/"):
        return value
    hint = "/" + value.replace("~", "~0").replace(".", "/")
    raise ValueError(
        f"{value!r} is not a JSON pointer: write {hint!r} (RFC 6901, starts with /), "
        "'header:<Name>' or 'cookie:<name>'"
    )


Location = Annotated[str, AfterValidator(_check_location)]


class AnswerParts(Model):
    """Where the login's answer keeps its parts. The lifetime is, in this order:
    ``expires_in``, ``expires_at``, the token's JWT ``exp``, the auth block's ``token_ttl``."""

    token: Location = "/access_token"
    refresh_token: Location | None = None
    expires_in: Location | None = None
    expires_in_unit: Literal["s", "ms"] = "s"
    # Some APIs send the number as a string ("1800000"); refused unless allowed here, so a
    # pointer at the wrong field is not taken for a lifetime.
    expires_in_string: bool = False
    expires_at: Location | None = None  # Unix time (expires_at_unit) or ISO 8601
    expires_at_unit: Literal["s", "ms"] = "s"
    refresh_expires_in: Location | None = None  # same unit; 0: until the API refuses it

    @model_validator(mode="after")
    def _one_lifetime(self) -> AnswerParts:
        if self.expires_in is not None and self.expires_at is not None:
            raise ValueError("give expires_in or expires_at, not both")
        return self


class FailureMatch(Model):
    """Answers that mean one kind of failure: by status, or by text in the body."""

    statuses: list[Annotated[int, Field(ge=100, le=599)]] = []
    body_contains: list[Annotated[str, Field(min_length=1)]] = []


class FailureRules(Model):
    """How the login endpoint says no. ``refused``: the credentials (no fast retry, the
    sidecar backs off); ``retry``: a passing trouble. Unlisted answers: a 4xx but 429 is
    refused, a 5xx or 429 is retried. Body matches win over statuses and apply to a 2xx
    too (APIs that answer ``200 {"success": false}``)."""

    refused: FailureMatch = FailureMatch()
    retry: FailureMatch = FailureMatch()

    @model_validator(mode="after")
    def _disjoint(self) -> FailureRules:
        both = set(self.refused.statuses) & set(self.retry.statuses)
        if both:
            listed = ", ".join(str(s) for s in sorted(both))
            raise ValueError(f"status {listed} is in both refused and retry: keep it in one")
        return self


def token_header_problem(header: str, prefix: str) -> str | None:
    if any(ch in prefix for ch in "\r\n\0"):
        return "token_prefix cannot contain line breaks"
    if header.lower() in ("host", "content-length", "transfer-encoding", "connection"):
        return f"token_header {header!r} is a framing header: name the header the API reads"
    return None
