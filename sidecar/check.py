"""``sidecar check``: everything ``sidecar run`` builds, built, with no network connection.

A config that passes ``check`` starts: TLS contexts, client identities, CA bundles, signer
keys and token sources are built exactly as ``run`` builds them (the same functions), and every
problem is collected, so one round shows them all. Rules ``run`` does not enforce come on top:
errors for routing that would leak (a ``passthrough`` host an upstream matches) or is
ambiguous (``match`` entries that overlap), warnings for what is allowed but likely wrong
(an empty secret file, a placeholder value, a plain ``http://`` target).
"""

from __future__ import annotations

import json
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from sidecar import check_files
from sidecar.auth import token_source
from sidecar.config import Config, config_warnings
from sidecar.config.auth import (
    AuthBase,
    MoexPassportAuth,
    MptSigninAuth,
    NcaNodeSigning,
    Pkcs7Signing,
)
from sidecar.config.errors import SetupError
from sidecar.config.fields import SecretFiles, parse_host_port
from sidecar.config.models import Upstream
from sidecar.config.sections import Tls
from sidecar.signing import make_signer
from sidecar.tls import CERT_WARNING_DAYS, client_context, client_identity


@dataclass(frozen=True)
class Problem:
    path: str  # the field path, as in the file (``upstreams.kisc.tls.p12_file``)
    message: str

    def line(self) -> str:
        return f"{self.path}: {self.message}"

    @classmethod
    def parse(cls, line: str) -> Problem:
        """A ``path: message`` line of a :class:`ConfigError`; a line with no path is kept
        whole under ``config``."""
        path, sep, message = line.partition(": ")
        if sep and path and " " not in path:
            return cls(path, message)
        return cls("config", line)


@dataclass
class Report:
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_json(self) -> str:
        """The stable shape CI pipelines read: ``ok``, ``errors``, ``warnings`` (each a list
        of ``{path, message}``)."""
        data = {
            "ok": self.ok,
            "errors": [{"path": p.path, "message": p.message} for p in self.errors],
            "warnings": [{"path": p.path, "message": p.message} for p in self.warnings],
        }
        return json.dumps(data, indent=2, ensure_ascii=False)


def check_config(config: Config) -> Report:
    report = Report()
    for name, upstream in config.upstreams.items():
        report.errors += _build(f"upstreams.{name}", name, upstream)
        report.warnings += _certificate_warnings(f"upstreams.{name}", upstream)
    report.errors += routing_errors(config)
    report.warnings += [Problem.parse(line) for line in config_warnings(config)]
    report.warnings += empty_secret_files(config) + placeholders(config)
    return report


# -- building ----------------------------------------------------------------------------


def _build(prefix: str, name: str, upstream: Upstream) -> list[Problem]:
    """Every part of an upstream ``run`` builds, built; each failure becomes a problem."""
    problems = tls_problems(f"{prefix}.tls", upstream.tls)
    auth = upstream.auth
    if isinstance(auth, AuthBase) and auth.tls is not None:
        problems += tls_problems(f"{prefix}.auth.tls", auth.tls)
    if isinstance(auth, MoexPassportAuth | MptSigninAuth):
        problems += signer_problems(
            f"{prefix}.auth.signer", auth.signer, detached=isinstance(auth, MoexPassportAuth)
        )
    if problems:
        return problems  # the builders below would only say the same less precisely
    try:
        ctx = client_context(upstream.tls)
        client_identity(upstream.tls)
        token_source(name, upstream, ctx)
    except SetupError as exc:
        return [Problem(prefix, str(exc))]
    except (ssl.SSLError, ValueError, OSError) as exc:
        return [Problem(prefix, f"cannot be built: {exc}")]
    return []


def tls_problems(prefix: str, tls: Tls) -> list[Problem]:
    problems: list[Problem] = []

    def add(fieldname: str, message: str | None) -> None:
        if message is not None:
            problems.append(Problem(f"{prefix}.{fieldname}", message))

    if tls.ca_file is not None:
        add("ca_file", check_files.ca_problem(tls.ca_file))
    problems += _identity_problems(prefix, tls.cert_file, tls.key_file, None)
    if tls.p12_file is not None:
        add("p12_file", check_files.p12_problem(tls.p12_file, tls.p12_password, "p12_password"))
    if problems:
        return problems
    try:
        client_context(tls)
    except SetupError as exc:
        problems.append(Problem(prefix, str(exc)))
    return problems


def _identity_problems(
    prefix: str, cert: Path | None, key: Path | None, password: SecretStr | None
) -> list[Problem]:
    if cert is None or key is None:
        return []
    found = [
        Problem(f"{prefix}.{f}", m)
        for f, m in (
            ("cert_file", check_files.cert_problem(cert)),
            ("key_file", check_files.key_problem(key, password)),
        )
        if m is not None
    ]
    if not found:
        mismatch = check_files.pair_problem(cert, key, password)
        if mismatch is not None:
            found.append(Problem(f"{prefix}.cert_file", mismatch))
    return found


def signer_problems(prefix: str, signer: Any, *, detached: bool) -> list[Problem]:
    problems: list[Problem] = []
    if isinstance(signer, Pkcs7Signing):
        problems += _identity_problems(prefix, signer.cert_file, signer.key_file,
                                       signer.key_password)
        if signer.p12_file is not None:
            message = check_files.p12_problem(signer.p12_file, signer.p12_password,
                                              "p12_password")
            if message is not None:
                problems.append(Problem(f"{prefix}.p12_file", message))
    elif isinstance(signer, NcaNodeSigning):
        if check_files.pem_kinds(signer.ncanode.p12_file):
            problems.append(Problem(
                f"{prefix}.ncanode.p12_file",
                f"{signer.ncanode.p12_file} is PEM text: NCANode takes the PKCS#12 key store",
            ))
    if problems:
        return problems
    try:
        make_signer(signer, detached_default=detached)
    except SetupError as exc:
        problems.append(Problem(prefix, str(exc)))
    return problems


def _certificate_warnings(prefix: str, upstream: Upstream) -> list[Problem]:
    try:
        identity = client_identity(upstream.tls)
    except (SetupError, ValueError, OSError):
        return []  # an error already
    if identity is None:
        return []
    days = identity.days_left()
    if days < 0:
        message = f"the client certificate ({identity.subject}) expired on " \
            f"{identity.not_after:%Y-%m-%d}: the server will refuse it; renew it"
    elif days < CERT_WARNING_DAYS:
        message = f"the client certificate ({identity.subject}) expires in {days:.1f} days"
    else:
        return []
    return [Problem(f"{prefix}.tls", message)]


# -- rules run does not enforce ------------------------------------------------------------


def routing_errors(config: Config) -> list[Problem]:
    """``match`` entries that overlap between upstreams (``host`` and ``host:443``: the
    request goes to one of them by port, which nobody meant), and ``passthrough`` hosts an
    upstream matches (the app's CONNECT would reach the API with no token)."""
    problems: list[Problem] = []
    owners: list[tuple[str, int, str]] = []  # host, port (0: any), upstream
    for name, upstream in config.upstreams.items():
        for entry in upstream.match:
            host, port = parse_host_port(entry, default_port=0)
            for other_host, other_port, other in owners:
                if other != name and host == other_host and (
                    port == 0 or other_port == 0 or port == other_port
                ):
                    problems.append(Problem(
                        f"upstreams.{name}.match",
                        f"{entry!r} overlaps {_entry(other_host, other_port)!r} of "
                        f"upstreams.{other}: a host without a port matches every port; "
                        "give each upstream its own host, or distinct ports on both",
                    ))
            owners.append((host, port, name))
    for index, entry in enumerate(config.passthrough):
        host, port = parse_host_port(entry, default_port=0)
        for other_host, other_port, other in owners:
            if host == other_host and (port == 0 or other_port == 0 or port == other_port):
                problems.append(Problem(
                    f"passthrough.{index}",
                    f"{entry!r} is matched by upstreams.{other}: a tunnel to it would reach "
                    "the API with no token; remove it from passthrough",
                ))
                break
    return problems


def _entry(host: str, port: int) -> str:
    return f"{host}:{port}" if port else host


def _walk(node: object, path: str) -> list[tuple[str, object]]:
    """Every model in a config with its field path."""
    found: list[tuple[str, object]] = []
    if isinstance(node, BaseModel):
        found.append((path, node))
        for name in type(node).model_fields:
            found += _walk(getattr(node, name), f"{path}.{name}" if path else name)
    elif isinstance(node, dict):
        for key, value in node.items():
            found += _walk(value, f"{path}.{key}")
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            found += _walk(value, f"{path}.{index}")
    return found


def empty_secret_files(config: Config) -> list[Problem]:
    problems = []
    for path, model in _walk(config, ""):
        if not isinstance(model, SecretFiles):
            continue
        for twin, file in sorted(model._secret_files.items()):
            secret = getattr(model, twin.removesuffix("_file"), None)
            if isinstance(secret, SecretStr) and not secret.get_secret_value().strip():
                problems.append(Problem(
                    f"{path}.{twin}", f"{file} is empty: the secret will be an empty string"
                ))
    return problems


# Case matters: ``your_name`` may be a real user name, ``YOUR_NAME`` is an example's.
_PLACEHOLDER = re.compile(r"\bYOUR_[A-Z0-9_]+|\bCHANGE_?ME\b|^<[^<>]+>$")


def placeholders(config: Config) -> list[Problem]:
    """Values left as in an example (``YOUR_PASSWORD``, ``CHANGE_ME``, ``<client id>``).
    The value is never quoted: it may be a secret."""
    problems = []
    for path, model in _walk(config, ""):
        assert isinstance(model, BaseModel)
        for name in type(model).model_fields:
            value = getattr(model, name)
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            if isinstance(text, str) and _PLACEHOLDER.search(text.strip()):
                where = f"{path}.{name}" if path else name
                problems.append(Problem(where, "looks like a placeholder: put the real value"))
    return problems
