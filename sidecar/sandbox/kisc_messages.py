"""The KISC transport API behind the WSO2 gateway (docs/protocols.md, "KISC"): messages
under ``/etsfo/1.0.0/messages/``.

``POST`` hands an XML message to KISC under its ``x-idempotency-key`` (202; a repeated key
is accepted and not stored again). ``GET /messages/`` lists the **unread incoming**
messages, in the SOAP-wrapped data-service format of KISC's portal guide (section 4.4.2);
the bank's own POSTs are outgoing and never listed. ``GET /messages/{id}`` returns one
incoming message and marks it read, so it leaves the list; fetching it again still works
(an assumption: the guide does not say, and a client whose answer was lost must be able
to retry). Bodies are read in chunks and kept only up to ``max_message_bytes``; the store
is bounded and starts with KISC's two sample incoming messages. ``deliver`` (and
``POST /_sandbox/deliver``) adds an incoming message, as a counterparty would. Authentication
and gateway faults are the gateway's business.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from aiohttp import web

from sidecar.sandbox.inbound import hash_body
from sidecar.sandbox.wso2_faults import API_CONTEXT

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_STORED_BYTES",
    "MAX_STORED_MESSAGES",
    "MESSAGES_PATH",
    "KiscMessages",
]

MESSAGES_PATH = f"{API_CONTEXT}/messages"

# Storage bounds: the sandbox keeps message bodies in memory.
DEFAULT_MAX_MESSAGE_BYTES = 10 * 1024 * 1024
MAX_STORED_MESSAGES = 1000
MAX_STORED_BYTES = 128 * 1024 * 1024
_MAX_REMEMBERED_KEYS = 100_000
_SNIFF_BYTES = 64 * 1024  # how much of a message is searched for its header fields
_DATASERVICE_NS = "http://ws.wso2.org/dataservice"


@dataclass
class _Message:
    key: str
    body: bytes
    message_type: str
    sender: str
    interaction_id: str
    content_type: str = "application/xml"
    inbound: bool = False  # incoming to the bank (seeded or delivered), not posted by it
    read: bool = False  # an incoming message fetched by GET /messages/{id}


@dataclass
class _Body:
    sha256: str
    length: int
    data: bytes | None  # None when over the limit


async def _read_message(request: web.Request, keep_limit: int) -> _Body:
    """Read the whole body in chunks, hashing it; keep it only while within ``keep_limit``.

    The body is always read to the end before answering, so error answers reach the
    client instead of a connection reset.
    """
    digest = hashlib.sha256()
    length = 0
    chunks: list[bytes] | None = []
    while chunk := await request.content.readany():
        digest.update(chunk)
        length += len(chunk)
        if chunks is not None:
            if length > keep_limit:
                chunks = None  # over the limit: stop keeping, carry on hashing
            else:
                chunks.append(chunk)
    return _Body(digest.hexdigest(), length, b"".join(chunks) if chunks is not None else None)


_BIZ_MSG_RE = re.compile(rb"<(?:[\w.-]+:)?BizMsgIdr>\s*([^<\s]+)\s*<")
_MSG_DEF_RE = re.compile(rb"<(?:[\w.-]+:)?MsgDefIdr?>\s*([^<\s]+)\s*<")
_SENDER_RE = re.compile(
    rb"<(?:[\w.-]+:)?Fr>.*?<(?:[\w.-]+:)?Id>\s*([^<\s]+)\s*<.*?"
    rb"<(?:[\w.-]+:)?Prtry>\s*([^<\s]+)\s*<",
    re.DOTALL,
)


def _sniff(body: bytes, fallback_sender: str) -> tuple[str, str]:
    """The ISO 20022 message type and sender from a business header, when readable.

    Encrypted envelopes carry neither in clear text: the type is then left empty and
    the sender is the KISC user who posted the message.
    """
    head = body[:_SNIFF_BYTES]
    found = _MSG_DEF_RE.search(head)
    message_type = found.group(1).decode("utf-8", "replace") if found else ""
    sender = _SENDER_RE.search(head)
    if sender:
        prtry = sender.group(2).decode("utf-8", "replace")
        ident = sender.group(1).decode("utf-8", "replace")
        return message_type, f"{prtry}.{ident}"
    return message_type, fallback_sender


def _element(name: str, value: str) -> str:
    return f"<{name}>{escape(value)}</{name}>" if value else f"<{name} />"


def _content_type(raw: str | None) -> str:
    """The posted media type as KISC lists it; the seed's ``application\\xml`` becomes xml."""
    media = (raw or "").split(";", 1)[0].strip().lower()
    if re.fullmatch(r"[\w.+-]+/[\w.+-]+", media):
        return media
    return "application/xml"


def _seed_message(key: str, to: str, message_type: str, document: str) -> _Message:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<Data>\n"
        "<Envelope>\n"
        '<AppHdr xmlns="urn:iso:std:iso:20022:tech:xsd:head.001.001.01">\n'
        "<Fr><FIId><FinInstnId><Othr><Id>SGROSS00</Id><SchmeNm><Prtry>KZGRO</Prtry>"
        "</SchmeNm></Othr></FinInstnId></FIId></Fr>\n"
        f"<To><FIId><FinInstnId><Othr><Id>{to}</Id><SchmeNm><Prtry>KZGRO</Prtry>"
        "</SchmeNm></Othr></FinInstnId></FIId></To>\n"
        f"<BizMsgIdr>{key}</BizMsgIdr>\n"
        f"<MsgDefIdr>{message_type}</MsgDefIdr>\n"
        "<CreDt>2021-05-11T18:18:29+06:00</CreDt>\n"
        "<Prty>NORM</Prty>\n"
        "<Sgntr />\n"
        "</AppHdr>\n"
        f"{document}"
        "</Envelope>\n"
        "</Data>\n"
    ).encode()
    return _Message(
        key=key,
        body=body,
        message_type=message_type,
        sender="KZGRO.SGROSS00",
        interaction_id="",
        inbound=True,
    )


def _seeded_messages() -> list[_Message]:
    """Two incoming messages as in KISC's guide (typos fixed), unread at start."""
    camt = (
        '<Document xmlns="urn:iso:std:iso:20022:tech:xsd:camt.054.001.07">\n'
        "<BkToCstmrDbtCdtNtfctn>\n"
        "<GrpHdr><MsgId>GRO2021051114103</MsgId>"
        "<CreDtTm>2021-05-11T18:18:29+06:00</CreDtTm></GrpHdr>\n"
        "<Ntfctn><Id>GRO2021051114103</Id>\n"
        "<Acct><Id><IBAN>KZ86319KZT1001300234</IBAN></Id>"
        "<Svcr><FinInstnId><BICFI>NBRKKZKX</BICFI></FinInstnId></Svcr></Acct>\n"
        '<Ntry><Amt Ccy="KZT">2450</Amt><CdtDbtInd>CRDT</CdtDbtInd>'
        "<Sts><Cd>BOOK</Cd></Sts><BkTxCd><Prtry><Cd>01</Cd></Prtry></BkTxCd>\n"
        "<NtryDtls><Btch><MsgId>MsgId_4d5e65d-77eb_1</MsgId><NbOfTxS>2</NbOfTxS>"
        '<TtlAmt Ccy="KZT">2450</TtlAmt></Btch></NtryDtls></Ntry>\n'
        "</Ntfctn>\n"
        "</BkToCstmrDbtCdtNtfctn>\n"
        "</Document>\n"
    )
    pacs = (
        '<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pacs.002.001.11">\n'
        "<FIToFIPmtStsRpt>\n"
        "<GrpHdr><MsgId>GRO2021051114106</MsgId>"
        "<CreDtTm>2021-05-11T18:18:28+06:00</CreDtTm></GrpHdr>\n"
        "<OrgnlGrpInfAndSts><OrgnlMsgId>MsgId_4d5e65d-77eb_1</OrgnlMsgId>"
        "<OrgnlMsgNmId>pacs.008.001.08</OrgnlMsgNmId>"
        "<OrgnlCreDtTm>2021-04-22T14:01:44+06:00</OrgnlCreDtTm>"
        "<GrpSts>ACSP</GrpSts></OrgnlGrpInfAndSts>\n"
        "<TxInfAndSts><OrgnlEndToEndId>EToEId_4d5e65d-77eb_1</OrgnlEndToEndId>"
        "<OrgnlTxId>MsgId_4d5e65d-77eb_1</OrgnlTxId></TxInfAndSts>\n"
        "</FIToFIPmtStsRpt>\n"
        "</Document>\n"
    )
    return [
        _seed_message("GRO2021051114103", "K9000666", "camt.054.001.07", camt),
        _seed_message("GRO2021051114106", "K0000014", "pacs.002.001.11", pacs),
    ]


class KiscMessages:
    """The message store and its three calls; counts what clients got wrong."""

    def __init__(self) -> None:
        self._messages: OrderedDict[str, _Message] = OrderedDict(
            (m.key, m) for m in _seeded_messages()
        )
        self._stored_bytes = 0  # bodies of posted (not seeded) messages
        self._seen_keys: OrderedDict[str, None] = OrderedDict()
        self.missing_idempotency = 0
        self.duplicate_posts = 0
        self._delivered = itertools.count(1)

    def __len__(self) -> int:
        return len(self._messages)

    def reset_stats(self) -> None:
        self.missing_idempotency = 0
        self.duplicate_posts = 0

    def message(self, key: str) -> bytes | None:
        """The stored bytes of message ``key`` (posted or incoming), if any."""
        found = self._messages.get(key)
        return found.body if found is not None else None

    @property
    def unread(self) -> int:
        return sum(1 for m in self._messages.values() if m.inbound and not m.read)

    def read(self, key: str) -> bytes | None:
        """``GET /messages/{id}``: an incoming message, marked read; None for an unknown
        key or one the bank posted itself (that is KISC's to read, not the bank's)."""
        found = self._messages.get(key)
        if found is None or not found.inbound:
            return None
        found.read = True
        return found.body

    def deliver(self, body: bytes, key: str | None = None) -> str:
        """Add an incoming message (what a counterparty sends the bank); returns its key.

        The key defaults to the ISO 20022 ``BizMsgIdr`` of the message, else a new one.
        """
        if key is None:
            found = _BIZ_MSG_RE.search(body[:_SNIFF_BYTES])
            key = found.group(1).decode("utf-8", "replace") if found else None
        if not key or key in self._messages:
            key = f"SANDBOX{next(self._delivered):09d}"
        message_type, sender = _sniff(body, "KZGRO.SGROSS00")
        incoming = [k for k, m in self._messages.items() if m.inbound]
        while len(incoming) >= MAX_STORED_MESSAGES:  # bounded like the posted ones
            del self._messages[incoming.pop(0)]
        self._messages[key] = _Message(
            key=key,
            body=body,
            message_type=message_type,
            sender=sender,
            interaction_id="",
            inbound=True,
        )
        return key

    def _store(self, message: _Message) -> None:
        self._messages[message.key] = message
        self._stored_bytes += len(message.body)
        self._seen_keys[message.key] = None
        self._seen_keys.move_to_end(message.key)
        while len(self._seen_keys) > _MAX_REMEMBERED_KEYS:
            self._seen_keys.popitem(last=False)
        posted = [m for m in self._messages.values() if not m.inbound]
        while posted and (
            len(posted) > MAX_STORED_MESSAGES or self._stored_bytes > MAX_STORED_BYTES
        ):
            oldest = posted.pop(0)
            del self._messages[oldest.key]
            self._stored_bytes -= len(oldest.body)

    def _list_xml(self) -> str:
        items = []
        for m in self._messages.values():
            if not m.inbound or m.read:
                continue  # the list is of unread incoming messages only
            items.append(
                f'      <MESSAGES xmlns="{_DATASERVICE_NS}">\n'
                f"        {_element('IDEMPOTENCY_KEY', m.key)}\n"
                f"        {_element('INTERACTION_ID', m.interaction_id)}\n"
                f"        {_element('CONTENTTYPE', m.content_type)}\n"
                f"        {_element('MESSAGE_TYPE', m.message_type)}\n"
                "        <RSTATUS>0</RSTATUS>\n"
                "        <RLASTERR>0</RLASTERR>\n"
                f"        {_element('RSENDER', m.sender)}\n"
                "      </MESSAGES>\n"
            )
        return (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">\n'
            "  <soapenv:Body>\n"
            "    <Data>\n" + "".join(items) + "    </Data>\n"
            "  </soapenv:Body>\n"
            "</soapenv:Envelope>\n"
        )

    def list_response(self) -> web.Response:
        return web.Response(text=self._list_xml(), content_type="application/xml", charset="UTF-8")

    async def post(
        self, request: web.Request, user: str, summary: dict[str, Any], max_bytes: int
    ) -> web.Response:
        """Store a posted message from KISC user ``user``, recording its body in ``summary``."""
        key = request.headers.get("x-idempotency-key", "").strip()
        if not key:
            summary["body_sha256"], summary["body_length"] = await hash_body(request)
            self.missing_idempotency += 1
            return web.json_response({"error": "missing x-idempotency-key"}, status=400)
        body = await _read_message(request, max_bytes)
        summary["body_sha256"], summary["body_length"] = body.sha256, body.length
        if key in self._messages or key in self._seen_keys:
            self.duplicate_posts += 1
            summary["duplicate"] = True
            return web.Response(status=202)
        if body.data is None:
            return web.json_response({"error": "message too large", "limit": max_bytes}, status=413)
        message_type, sender = _sniff(body.data, user)
        self._store(
            _Message(
                key=key,
                body=body.data,
                message_type=message_type,
                sender=sender,
                interaction_id=request.headers.get("x-fapi-interaction-id", ""),
                content_type=_content_type(request.headers.get("Content-Type")),
            )
        )
        return web.Response(status=202)
