"""Which config values are secret, decided by the models alone: every ``SecretStr`` field, and
its ``x_file`` twin (a path whose content becomes the secret).

One walk over a validated config serves both the masked ``sidecar check`` output and the
values the logs redact; one walk over an error location decides whether its input may be shown.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr

MASK = "***"


def _members(annotation: Any) -> tuple[Any, ...]:
    """The types an annotation may hold: ``Annotated`` unwrapped, unions split."""
    if get_origin(annotation) is Annotated:
        return _members(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(m for arg in get_args(annotation) for m in _members(arg))
    return (annotation,)


def _is_secret_type(annotation: Any) -> bool:
    return any(m is SecretStr for m in _members(annotation))


@functools.cache
def secret_fields(model: type[BaseModel]) -> frozenset[str]:
    """The model's ``SecretStr`` fields."""
    return frozenset(n for n, f in model.model_fields.items() if _is_secret_type(f.annotation))


@functools.cache
def secret_file_twins(model: type[BaseModel]) -> dict[str, str]:
    """``x_file`` -> ``x`` for each secret field ``x`` that may be given as a file. A declared
    ``x_file`` field (static auth's ``token_file``, re-read at run time) is not a twin."""
    return {
        f"{name}_file": name
        for name in secret_fields(model)
        if f"{name}_file" not in model.model_fields
    }


def _union_tag(member: Any) -> str | None:
    """The ``type`` literal of a tagged-union member (auth and signer blocks)."""
    if not (isinstance(member, type) and issubclass(member, BaseModel)):
        return None
    field = member.model_fields.get("type")
    if field is None or get_origin(field.annotation) is not Literal:
        return None
    tags = get_args(field.annotation)
    return tags[0] if len(tags) == 1 else None


def read_location(root: type[BaseModel], loc: Sequence[str | int]) -> tuple[list[str], bool]:
    """An error location as the user wrote it (union tags left out), and whether the value
    there is a secret. A location the models do not describe is shown and is not secret."""
    shown: list[str] = []
    current: tuple[Any, ...] = (root,)
    secret = False
    for part in loc:
        tags = [_union_tag(m) for m in current]
        if sum(t is not None for t in tags) > 1 and part in tags:
            # pydantic names the tagged-union member it tried: not part of the user's path
            current = tuple(m for m, t in zip(current, tags, strict=True) if t == part)
            continue
        shown.append(str(part))
        following: list[Any] = []
        secret = False
        for member in current:
            if isinstance(member, type) and issubclass(member, BaseModel):
                field = member.model_fields.get(str(part))
                if field is not None:
                    following.extend(_members(field.annotation))
                    secret = secret or _is_secret_type(field.annotation)
                elif str(part) in secret_file_twins(member):
                    secret = True
            elif get_origin(member) is dict:
                following.extend(_members(get_args(member)[1]))
            elif get_origin(member) is list:
                following.extend(_members(get_args(member)[0]))
        current = tuple(following)
    return shown, secret


def known_fields(root: type[BaseModel], loc: Sequence[str | int]) -> set[str]:
    """The field names the block at an error location takes (``x_file`` twins included),
    for suggesting the one a misspelt field meant."""
    current: tuple[Any, ...] = (root,)
    for part in loc:
        following: list[Any] = []
        for member in current:
            if isinstance(member, type) and issubclass(member, BaseModel):
                field = member.model_fields.get(str(part))
                if field is not None:
                    following.extend(_members(field.annotation))
                elif _union_tag(member) == part:  # pydantic names the union member it tried
                    following.append(member)
            elif get_origin(member) is dict:
                following.extend(_members(get_args(member)[1]))
            elif get_origin(member) is list:
                following.extend(_members(get_args(member)[0]))
        current = tuple(following)
    names: set[str] = set()
    for member in current:
        if isinstance(member, type) and issubclass(member, BaseModel):
            names |= set(member.model_fields) | set(secret_file_twins(member))
    return names


def replace_secrets(value: Any, replace: Callable[[SecretStr], Any]) -> Any:
    """Validated config data as plain data, each ``SecretStr`` given to ``replace``."""
    if isinstance(value, SecretStr):
        return replace(value)
    if isinstance(value, BaseModel):
        # Under the names the file uses (json_login's ``json`` is ``json_body`` in Python).
        return {
            (f.alias or n): replace_secrets(getattr(value, n), replace)
            for n, f in type(value).model_fields.items()
        }
    if isinstance(value, dict):
        return {k: replace_secrets(v, replace) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [replace_secrets(v, replace) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def redacted(config: BaseModel) -> dict[str, Any]:
    """The effective config as plain data with every secret shown as ``***``."""
    return replace_secrets(config, lambda _: MASK)


def secret_values(config: BaseModel) -> list[str]:
    """Every secret value in a validated config, for the logs to cut out."""
    found: list[str] = []

    def keep(secret: SecretStr) -> str:
        found.append(secret.get_secret_value())
        return MASK

    replace_secrets(config, keep)
    return found
