"""The files a validated config names: certificates, keys, token files, and the files its
secrets were read from. The reloader watches them; a change to one reloads, and decides
what the change touches (TLS material, a signing key)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from sidecar.config.auth import AuthBase, MoexPassportAuth, MptSigninAuth
from sidecar.config.fields import SecretFiles
from sidecar.config.models import Config, Upstream


def files_of(node: object) -> set[Path]:
    """Every path in a config block: ``Path`` fields and secret ``x_file`` twins, at any depth."""
    found: set[Path] = set()
    if isinstance(node, Path):
        found.add(node)
    elif isinstance(node, BaseModel):
        if isinstance(node, SecretFiles):
            found |= node.secret_files
        for name in type(node).model_fields:
            found |= files_of(getattr(node, name))
    elif isinstance(node, dict):
        for value in node.values():
            found |= files_of(value)
    elif isinstance(node, list | tuple):
        for value in node:
            found |= files_of(value)
    return found


def config_files(config: Config) -> set[Path]:
    """Every file the config names (not the config file itself)."""
    return files_of(config)


def tls_files(upstream: Upstream) -> set[Path]:
    """The TLS material towards the target and the IdP."""
    files = files_of(upstream.tls)
    if isinstance(upstream.auth, AuthBase) and upstream.auth.tls is not None:
        files |= files_of(upstream.auth.tls)
    return files


def signer_files(upstream: Upstream) -> set[Path]:
    """The signing key and certificate (and their secrets) of a signed login."""
    if isinstance(upstream.auth, MoexPassportAuth | MptSigninAuth):
        return files_of(upstream.auth.signer)
    return set()
