"""Parts of the sandbox MOEX registration API: the documents it receives (the body read in
bounded chunks, the fields it is filed under, the status it reports) and the stand's hours."""

from __future__ import annotations

import hashlib
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime
from datetime import time as dtime
from typing import Any

from aiohttp import web


def real_clock() -> datetime:
    return datetime.now(UTC)


def parse_hours(value: Any) -> tuple[dtime, dtime] | None:
    """``null`` or ``["HH:MM", "HH:MM"]`` from the settings endpoint."""
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError('hours must be null or ["HH:MM", "HH:MM"]')
    start, end = (dtime.fromisoformat(str(v)) for v in value)
    if start.tzinfo is not None or end.tzinfo is not None:
        raise ValueError("hours are Moscow times without a UTC offset")
    return start, end


def local_name(name: str) -> str:
    """An XML tag or attribute name without its ``{namespace}``."""
    return name.rsplit("}", 1)[-1].lower()


def doc_field(root: ET.Element, name: str) -> str | None:
    """The first non-empty attribute or element called ``name`` (case-insensitive)."""
    for element in root.iter():
        for attr, value in element.attrib.items():
            if local_name(attr) == name and value.strip():
                return value.strip()
        if local_name(element.tag) == name and element.text and element.text.strip():
            return element.text.strip()
    return None


@dataclass
class Body:
    data: bytes | None  # None: not kept (drained, or over the limit and cut short)
    sha256: str | None
    length: int


async def read_body(request: web.Request, limit: int | None) -> Body:
    """Read the body in chunks. With a ``limit``, stop as soon as it is exceeded and keep
    nothing; without one, drain and hash it all (so an early error reaches the client
    instead of a connection reset)."""
    digest = hashlib.sha256()
    chunks: list[bytes] = []
    length = 0
    while chunk := await request.content.readany():
        length += len(chunk)
        if limit is not None:
            if length > limit:
                # aiohttp discards the unread rest after the answer, so the 413 still arrives.
                return Body(None, None, length)
            chunks.append(chunk)
        digest.update(chunk)
    return Body(b"".join(chunks) if limit is not None else None, digest.hexdigest(), length)


@dataclass
class Application:
    doc_date: str
    doc_num: str
    client_id: str
    root_tag: str
    body: bytes
    sha256: str
    received_at: datetime  # by the API's clock, in MSK
    accepted_at: float  # time.monotonic(); drives accepted -> processed

    def state(self, processing_delay: float) -> str:
        done = time.monotonic() - self.accepted_at >= processing_delay
        return "processed" if done else "accepted"

    def status_xml(self, processing_delay: float) -> bytes:
        """The status answer. MOEX says only that it is "in the registration file format"
        (the format of the document sent, moex.com/a3361, not in the public text), so the
        sandbox answers the document it received with the processing status added as
        attributes of its root element: ``DOC_DATE``, ``DOC_NUM``, ``STATUS``
        (``accepted`` then ``processed``) and ``RECEIVED_AT``. A client must read it as
        XML; which fields the real answer carries is not documented."""
        root = ET.fromstring(self.body)
        root.set("DOC_DATE", self.doc_date)
        root.set("DOC_NUM", self.doc_num)
        root.set("STATUS", self.state(processing_delay))
        root.set("RECEIVED_AT", self.received_at.isoformat())
        return ET.tostring(root, encoding="utf-8", xml_declaration=True)
