"""Building a signer from its config block. Each backend is imported only when a config
uses it: ``pkcs7`` loads cryptography (about 10 MiB), which a sidecar without it never needs."""

from __future__ import annotations

from sidecar.config.auth import CommandSigning, Pkcs7Signing, SignerConfig
from sidecar.signing.base import Signer


def make_signer(cfg: SignerConfig, *, detached_default: bool) -> Signer:
    detached = cfg.detached if cfg.detached is not None else detached_default
    cfg.check_detached(detached)
    if isinstance(cfg, Pkcs7Signing):
        from sidecar.signing.pkcs7 import Pkcs7Signer

        return Pkcs7Signer(cfg, detached)
    if isinstance(cfg, CommandSigning):
        from sidecar.signing.command import CommandSigner

        return CommandSigner(cfg.command, detached)
    from sidecar.signing.ncanode import NcaNodeSigner

    return NcaNodeSigner(cfg.ncanode, detached)
