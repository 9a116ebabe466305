"""The client certificate's subject and expiry read without cryptography
(``sidecar.certinfo``): the same text and instant as cryptography gives, for the subjects
real certificates have and the ones that need RFC 4514 escaping."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID, ObjectIdentifier

from sidecar.certinfo import certificate_info
from sidecar.sandbox.pki import Pki

_KEY = ec.generate_private_key(ec.SECP256R1())
_NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def _pem(subject: x509.Name, not_after: dt.datetime) -> bytes:
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer")]))
        .public_key(_KEY.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOW)
        .not_valid_after(not_after)
        .sign(_KEY, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _attr(oid: ObjectIdentifier, value: str | bytes, kind: _ASN1Type | None = None) -> (
    x509.NameAttribute
):
    return x509.NameAttribute(oid, value, _type=kind) if kind else x509.NameAttribute(oid, value)


SUBJECTS = {
    "plain": x509.Name([_attr(NameOID.COUNTRY_NAME, "KZ"),
                        _attr(NameOID.ORGANIZATION_NAME, "Bank, JSC"),
                        _attr(NameOID.COMMON_NAME, "client.example")]),
    # A KISC-style personal certificate: attributes without a short name, Cyrillic text.
    "kisc": x509.Name([_attr(NameOID.COMMON_NAME, "ИВАНОВ ИВАН"),
                       _attr(NameOID.SURNAME, "ИВАНОВ"),
                       _attr(NameOID.SERIAL_NUMBER, "IIN123456789012"),
                       _attr(NameOID.EMAIL_ADDRESS, "a@b.kz"),
                       _attr(NameOID.ORGANIZATIONAL_UNIT_NAME, "BIN123456789012")]),
    "escaping": x509.Name([_attr(NameOID.COMMON_NAME, '#a+b,c;d<e>f"g\\h '),
                           _attr(NameOID.ORGANIZATION_NAME, " lead"),
                           _attr(NameOID.LOCALITY_NAME, "nul\0in")]),
    "multi-valued": x509.Name([x509.RelativeDistinguishedName([
        _attr(NameOID.COMMON_NAME, "a"), _attr(NameOID.USER_ID, "u1")]),
        x509.RelativeDistinguishedName([_attr(NameOID.DOMAIN_COMPONENT, "example")])]),
    "string types": x509.Name([_attr(NameOID.COMMON_NAME, "bmp ü", _ASN1Type.BMPString),
                               _attr(NameOID.ORGANIZATION_NAME, "univ €",
                                     _ASN1Type.UniversalString),
                               _attr(NameOID.STREET_ADDRESS, "ia5", _ASN1Type.IA5String),
                               _attr(NameOID.STATE_OR_PROVINCE_NAME, "t61",
                                     _ASN1Type.T61String),
                               _attr(NameOID.X500_UNIQUE_IDENTIFIER, b"\x00\xab",
                                     _ASN1Type.BitString)]),
    "empty": x509.Name([]),
}


@pytest.mark.parametrize("name", list(SUBJECTS))
@pytest.mark.parametrize(
    "not_after",
    [dt.datetime(2027, 3, 4, 5, 6, 7, tzinfo=dt.UTC),  # UTCTime
     dt.datetime(2051, 12, 31, 23, 59, 59, tzinfo=dt.UTC)],  # GeneralizedTime from 2050
    ids=["utctime", "generalizedtime"],
)
def test_subject_and_expiry_are_what_cryptography_reads(name: str, not_after: dt.datetime) -> None:
    pem = _pem(SUBJECTS[name], not_after)
    cert = x509.load_pem_x509_certificate(pem)
    assert certificate_info(pem) == (cert.subject.rfc4514_string(), cert.not_valid_after_utc)


def test_the_first_certificate_of_a_chain_file_with_text_around_it(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    client = pki.issue_client("client", "app.example")
    pem = b"Bag Attributes\n    friendlyName: client\n" + client.cert_file.read_bytes() + \
        pki.ca_file.read_bytes()
    assert certificate_info(pem) == (client.cert.subject.rfc4514_string(),
                                     client.cert.not_valid_after_utc)


@pytest.mark.parametrize(
    "pem",
    [b"", b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
     b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n",
     b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"],
    ids=["nothing", "not-base64", "not-a-certificate", "cut-short"],
)
def test_what_is_not_a_certificate_is_a_value_error(pem: bytes) -> None:
    with pytest.raises(ValueError):
        certificate_info(pem)

