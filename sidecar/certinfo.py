"""The subject and expiry of a PEM certificate, read from its DER without ``cryptography``.

The running sidecar needs only these two fields of its client certificate (``/status``, the
expiry warning and metric), and importing ``cryptography`` for them costs about 10 MiB of
resident memory. ``cryptography`` stays where it does real work (PKCS#12 bundles, signing,
interception, ``sidecar check``), imported only when such a feature is configured. The
subject is written exactly as ``cryptography``'s ``Name.rfc4514_string()`` writes it.
"""

from __future__ import annotations

import binascii
import re
from datetime import UTC, datetime

# RFC 4514 short names, as cryptography's rfc4514_string() uses them; others as dotted OIDs.
_SHORT_NAMES = {
    "2.5.4.3": "CN", "2.5.4.7": "L", "2.5.4.8": "ST", "2.5.4.10": "O", "2.5.4.11": "OU",
    "2.5.4.6": "C", "2.5.4.9": "STREET", "0.9.2342.19200300.100.1.25": "DC",
    "0.9.2342.19200300.100.1.1": "UID",
}
_PEM = re.compile(
    rb"-----BEGIN (?:X509 )?CERTIFICATE-----\s*(.*?)-----END (?:X509 )?CERTIFICATE-----",
    re.DOTALL,
)
_SEQUENCE, _SET, _OID, _BIT_STRING = 0x30, 0x31, 0x06, 0x03
_UNIVERSAL_STRING, _BMP_STRING = 0x1C, 0x1E
_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18
_VERSION = 0xA0  # [0] EXPLICIT, optional


def certificate_info(pem: bytes) -> tuple[str, datetime]:
    """The first certificate in ``pem``: its subject (RFC 4514) and its notAfter (UTC).

    Raises ValueError for anything that is not a DER certificate in PEM armour."""
    match = _PEM.search(pem)
    if match is None:
        raise ValueError("no PEM certificate found")
    try:
        der = binascii.a2b_base64(match[1])
    except binascii.Error:
        raise ValueError("the PEM certificate is not valid base64") from None
    try:
        return _read(der)
    except (IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"the certificate's DER cannot be read ({exc})") from None


def _read(der: bytes) -> tuple[str, datetime]:
    _, pos, _ = _expect(der, 0, _SEQUENCE)  # Certificate
    _, pos, _ = _expect(der, pos, _SEQUENCE)  # TBSCertificate
    if der[pos] == _VERSION:
        pos = _tlv(der, pos)[2]
    pos = _tlv(der, pos)[2]  # serialNumber
    pos = _tlv(der, pos)[2]  # signature algorithm
    pos = _tlv(der, pos)[2]  # issuer
    _, start, after_validity = _expect(der, pos, _SEQUENCE)  # validity
    not_after = _time(der, _tlv(der, start)[2])
    _, start, end = _expect(der, after_validity, _SEQUENCE)  # subject
    return _name(der, start, end), not_after


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """The tag at ``pos``, where its content starts, and where it ends."""
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(der):
        raise ValueError("DER element runs past the end")
    return tag, pos, end


def _expect(der: bytes, pos: int, tag: int) -> tuple[int, int, int]:
    found = _tlv(der, pos)
    if found[0] != tag:
        raise ValueError(f"DER tag {found[0]:#04x} where {tag:#04x} was expected")
    return found


def _time(der: bytes, pos: int) -> datetime:
    tag, start, end = _tlv(der, pos)
    text = der[start:end].decode("ascii")
    if tag == _UTC_TIME:  # YYMMDDHHMMSSZ; RFC 5280: 50-99 are 19xx
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != _GENERALIZED_TIME:
        raise ValueError(f"DER tag {tag:#04x} where a time was expected")
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)


def _name(der: bytes, pos: int, end: int) -> str:
    rdns: list[str] = []
    while pos < end:
        _, start, pos = _expect(der, pos, _SET)
        attributes: list[str] = []
        while start < pos:
            _, field, start = _expect(der, start, _SEQUENCE)
            _, oid_start, oid_end = _expect(der, field, _OID)
            oid = _oid(der[oid_start:oid_end])
            tag, value_start, value_end = _tlv(der, oid_end)
            value = _value(tag, der[value_start:value_end])
            attributes.append(f"{_SHORT_NAMES.get(oid, oid)}={_escape(value)}")
        rdns.append("+".join(attributes))
    return ",".join(reversed(rdns))


def _oid(data: bytes) -> str:
    parts: list[int] = []
    value = 0
    for byte in data:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            parts.append(value)
            value = 0
    if not parts:
        raise ValueError("empty OID")
    first = parts[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(p) for p in head + parts[1:])


def _value(tag: int, data: bytes) -> str | bytes:
    """As cryptography decodes an attribute value: a BIT STRING stays bytes, BMPString and
    UniversalString are UTF-16 and UTF-32, every other string type is read as UTF-8."""
    if tag == _BIT_STRING:
        return data
    if tag == _BMP_STRING:
        return data.decode("utf_16_be")
    if tag == _UNIVERSAL_STRING:
        return data.decode("utf_32_be")
    return data.decode("utf-8")


def _escape(value: str | bytes) -> str:
    """RFC 4514 section 2.4, as cryptography's ``_escape_dn_value``."""
    if not value:
        return ""
    if isinstance(value, bytes):
        return "#" + value.hex()
    for char in ("\\", '"', "+", ",", ";", "<", ">"):
        value = value.replace(char, "\\" + char)
    value = value.replace("\0", "\\00")
    if value[0] == "#" or (value[0] == " " and len(value) > 1):
        value = "\\" + value
    if value[-1] == " ":
        value = value[:-1] + "\\ "
    return value
