"""Signers: turn login challenges into CMS (PKCS#7) signatures, one small protocol, three ways."""

from sidecar.signing.base import Signer, SigningError, b64
from sidecar.signing.factory import make_signer

__all__ = ["Signer", "SigningError", "b64", "make_signer"]
