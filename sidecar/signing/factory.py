"""Building a signer from its config block."""

from __future__ import annotations

from sidecar.config.auth import CommandSigning, Pkcs7Signing, SignerConfig
from sidecar.signing.base import Signer
from sidecar.signing.command import CommandSigner
from sidecar.signing.ncanode import NcaNodeSigner
from sidecar.signing.pkcs7 import Pkcs7Signer


def make_signer(cfg: SignerConfig, *, detached_default: bool) -> Signer:
    detached = cfg.detached if cfg.detached is not None else detached_default
    cfg.check_detached(detached)
    if isinstance(cfg, Pkcs7Signing):
        return Pkcs7Signer(cfg, detached)
    if isinstance(cfg, CommandSigning):
        return CommandSigner(cfg.command, detached)
    return NcaNodeSigner(cfg.ncanode, detached)
