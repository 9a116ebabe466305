"""The built-in signer's CMS verifies with the real `openssl cms -verify -binary`."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config.auth import Pkcs7Signing
from sidecar.config.errors import SetupError
from sidecar.sandbox.cms import CmsInvalid, verify_cms
from sidecar.sandbox.pki import IssuedCert, Pki
from sidecar.signing import make_signer
from sidecar.signing.pkcs7 import SignerSetupError

# Passport tokens carry + / = and some clients have seen line endings in them: the exact
# bytes must be signed, never normalised.
AWKWARD = [b"aGVsbG8+d29ybGQ/Zm9v==", b"line one\nline two\r\nthree\r", b"trailing-equals==\n"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def _config(cert: IssuedCert, form: str, **extra: object) -> Pkcs7Signing:
    if form == "pem":
        files = {"cert_file": str(cert.cert_file), "key_file": str(cert.key_file)}
    else:
        files = {"p12_file": str(cert.p12_file), "p12_password": cert.p12_password}
    return Pkcs7Signing(type="pkcs7", **files, **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize("key_type", ["rsa", "ec"])
@pytest.mark.parametrize("form", ["pem", "p12"])
@pytest.mark.parametrize("detached", [True, False])
async def test_signatures_verify_with_openssl(
    pki: Pki, key_type: str, form: str, detached: bool
) -> None:
    cert = pki.issue_client(f"signer-{key_type}", f"user-{key_type}", key_type=key_type)  # type: ignore[arg-type]
    signer = make_signer(_config(cert, form), detached_default=detached)
    for data in AWKWARD:
        der = await signer.sign(data)
        verified = await verify_cms(
            der, ca_file=pki.ca_file, detached_content=data if detached else None
        )
        assert verified.content == data
        assert verified.signer.subject == cert.cert.subject


async def test_detached_signature_does_not_verify_other_bytes(pki: Pki) -> None:
    cert = pki.issue_client("signer-x", "user-x")
    signer = make_signer(_config(cert, "pem"), detached_default=True)
    der = await signer.sign(b"token==")
    for other in (b"token==\n", b"token=", b"token==\r\n"):
        with pytest.raises(CmsInvalid):
            await verify_cms(der, ca_file=pki.ca_file, detached_content=other)


async def test_options_change_the_structure(pki: Pki) -> None:
    cert = pki.issue_client("signer-o", "user-o")
    plain = await make_signer(_config(cert, "pem"), detached_default=True).sign(b"x")
    bare = await make_signer(
        _config(cert, "pem", signed_attributes=False, digest="sha512"), detached_default=True
    ).sign(b"x")
    assert plain != bare
    verified = await verify_cms(bare, ca_file=pki.ca_file, detached_content=b"x")
    assert verified.content == b"x"


def test_unusable_keys_are_clear_errors(pki: Pki, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    cert = pki.issue_client("signer-e", "user-e")
    ed_key = tmp_path / "ed.key"
    ed_key.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(SignerSetupError, match="RSA or EC keys; for GOST use the command"):
        make_signer(
            Pkcs7Signing(type="pkcs7", cert_file=cert.cert_file, key_file=ed_key),
            detached_default=True,
        )
    with pytest.raises(SetupError, match=r"signer\.p12_file .*wrong password"):
        make_signer(
            Pkcs7Signing(type="pkcs7", p12_file=cert.p12_file, p12_password="nope"),
            detached_default=True,
        )


def test_certificate_and_key_must_belong_together(pki: Pki) -> None:
    one, other = pki.issue_client("pair-a", "a"), pki.issue_client("pair-b", "b")
    with pytest.raises(SignerSetupError, match="does not hold the certificate"):
        make_signer(
            Pkcs7Signing(type="pkcs7", cert_file=one.cert_file, key_file=other.key_file),
            detached_default=True,
        )
