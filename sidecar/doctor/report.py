"""What ``sidecar doctor`` found: one :class:`Step` per check, as a table or as JSON.

A step's detail and fix are written by the doctor itself from what it observed (addresses,
TLS versions, certificate names, HTTP statuses, the IdP's error reason): never a secret,
a token or a response body.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

Status = Literal["ok", "warn", "fail", "skip"]


@dataclass(frozen=True)
class Step:
    upstream: str
    step: str  # dns, tcp, tls, client_cert, clock, token_endpoint, login, probe
    where: str  # host:port or URL the step talked to
    status: Status
    detail: str
    fix: str = ""


def failed(steps: list[Step]) -> bool:
    return any(s.status == "fail" for s in steps)


def as_json(steps: list[Step]) -> str:
    """``{ok, upstreams: {name: {ok, steps: [{step, where, status, detail, fix}]}}}``."""
    upstreams: dict[str, dict[str, object]] = {}
    for name in dict.fromkeys(s.upstream for s in steps):
        mine = [s for s in steps if s.upstream == name]
        upstreams[name] = {
            "ok": not failed(mine),
            "steps": [{k: v for k, v in asdict(s).items() if k != "upstream"} for s in mine],
        }
    return json.dumps({"ok": not failed(steps), "upstreams": upstreams}, indent=2,
                      ensure_ascii=False)


_MARK = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "skip"}


def as_table(steps: list[Step]) -> str:
    """One line per step, each fix on the line below its failure, a summary at the end."""
    rows = [(s.upstream, s.step, s.where, _MARK[s.status], s.detail) for s in steps]
    header = ("UPSTREAM", "STEP", "WHERE", "RESULT", "DETAIL")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = []
    for row, step in zip([header, *rows], [None, *steps], strict=True):
        cells = [cell.ljust(width) for cell, width in zip(row[:4], widths, strict=False)]
        lines.append("  ".join([*cells, row[4]]).rstrip())
        if step is not None and step.fix and step.status in ("fail", "warn"):
            lines.append(" " * (sum(widths[:2]) + 4) + f"fix: {step.fix}")
    bad = [s for s in steps if s.status == "fail"]
    names = ", ".join(dict.fromkeys(s.upstream for s in bad))
    lines.append("")
    lines.append(f"{len(bad)} step(s) failed: {names}" if bad else "all steps passed")
    return "\n".join(lines)
