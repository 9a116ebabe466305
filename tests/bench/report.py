"""The benchmark's output: markdown tables and a JSON file, plus the sidecar's targets.

The targets are ratios against the peers measured in the same run. They are printed as
"met" or "missed" and never fail the run: timings on a shared machine are information,
not a test.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["markdown", "targets", "write"]

MIB = 1024 * 1024

# (what, how the value is computed from the rows, goal, True when lower is better)
_Target = tuple[str, Callable[[dict[str, dict[str, Any]]], float | None], float, bool]


def _get(rows: dict[str, dict[str, Any]], name: str, *keys: str) -> float | None:
    value: Any = rows.get(name)
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return float(value) if isinstance(value, int | float) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _mib(value: float | None) -> float | None:
    return value / MIB if value is not None else None


def _cpu(rows: dict[str, dict[str, Any]], name: str) -> float | None:
    return _get(rows, name, "cpu_us_per_req")


# The performance goals: ratios to the peers measured in the same run.
_TARGETS: list[_Target] = [
    (
        "CPU per request / Envoy's",
        lambda r: _ratio(_cpu(r, "sidecar"), _cpu(r, "envoy")),
        1.0, True,
    ),
    (
        "CPU per request / proxy.py's",
        lambda r: _ratio(_cpu(r, "sidecar"), _cpu(r, "proxy.py")),
        0.5, True,
    ),
    (
        "p99 at c=32 / Envoy's",
        lambda r: _ratio(_get(r, "sidecar", "load", "p99_ms"),
                         _get(r, "envoy", "load", "p99_ms")),
        1.0, True,
    ),
    (
        "added latency at c=1 (p50) / Envoy's",
        lambda r: _ratio(_get(r, "sidecar", "c1_added_p50_ms"),
                         _get(r, "envoy", "c1_added_p50_ms")),
        1.0, True,
    ),
    (
        "CPU per request, redis store / memory store",
        lambda r: _ratio(_cpu(r, "sidecar, redis store"), _cpu(r, "sidecar")),
        1.1, True,
    ),
    (
        "CPU per request, interception / Envoy terminating TLS",
        lambda r: _ratio(_cpu(r, "sidecar, interception"), _cpu(r, "envoy, TLS from the app")),
        1.0, True,
    ),
    (
        "upload: peak RSS growth, MiB",
        lambda r: _mib(_get(r, "sidecar", "upload", "rss_growth")),
        32.0, True,
    ),
    (
        "upload: MB/s / nginx's",
        lambda r: _ratio(_get(r, "sidecar", "upload", "mb_per_s"),
                         _get(r, "nginx", "upload", "mb_per_s")),
        0.5, False,
    ),
    (
        "download: peak RSS growth, MiB",
        lambda r: _mib(_get(r, "sidecar", "download", "rss_growth")),
        32.0, True,
    ),
    (
        "download: MB/s / nginx's",
        lambda r: _ratio(_get(r, "sidecar", "download", "mb_per_s"),
                         _get(r, "nginx", "download", "mb_per_s")),
        0.5, False,
    ),
    (
        "idle RSS, MiB",
        lambda r: _mib(_get(r, "sidecar", "rss_idle")),
        50.0, True,
    ),
]


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target of the sidecar: its value from this run, the goal, and whether it is met.

    A transfer's values count only when the transfer itself succeeded.
    """
    by_name = {row["name"]: _usable(row) for row in rows}
    out = []
    for what, compute, goal, lower in _TARGETS:
        value = compute(by_name)
        met = None if value is None else (value <= goal if lower else value >= goal)
        out.append({"target": what, "value": value, "goal": f"{'<=' if lower else '>='} {goal:g}",
                    "met": met})
    return out


def _usable(row: dict[str, Any]) -> dict[str, Any]:
    clean = dict(row)
    for key in ("upload", "download"):
        if isinstance(clean.get(key), dict) and clean[key].get("error"):
            clean[key] = None
    return clean


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _transfer(row: dict[str, Any], key: str) -> tuple[str, str]:
    transfer = row.get(key)
    if not isinstance(transfer, dict):
        return "—", "—"
    rss = _num(_mib(transfer.get("rss_growth")))
    if transfer.get("error"):
        return f"failed: {transfer['error']}", rss
    rate = _num(transfer["mb_per_s"], 0)
    if not transfer.get("complete", True):
        rate += (f" (stopped after {transfer['seconds']:.0f} s, "
                 f"{transfer['bytes_moved'] / MIB:,.0f} of {transfer['size'] / MIB:,.0f} MiB)")
    return rate, rss


def _name(row: dict[str, Any]) -> str:
    return row["name"] + (" (hey)" if row.get("load_tool") == "hey" else "")


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    m = result["machine"]
    v = result["versions"]
    lines = [
        f"**Benchmark ({result['mode']})**, {result['date']}, code at {result['code']}",
        "",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']:.0f} GiB, "
        f"Linux {m['kernel']}, load average {m.get('load_average_before', '?')} before the "
        f"run. Pinning: {result['pinning']}.",
        f"- Versions: nginx {v['nginx']}, Envoy {v['envoy']}, proxy.py {v['proxy.py']}, "
        f"Python {v['python']}, aiohttp {v['aiohttp']}, uvloop {v['uvloop']}, wrk {v['wrk']}"
        f", hey {v.get('hey', '?')}, Redis {v.get('redis', '?')}.",
        f"- Load: wrk, 1 thread, small GET, keep-alive, c={s['connections']} for "
        f"{s['duration']:g} s after {s['warmup']:g} s of warm-up; c=1 for {s['c1_duration']:g} s. "
        f"Both in {s['rounds']} round(s) with the rows interleaved; latencies are the medians "
        "of the rounds. Rows marked (hey) are the app speaking TLS, loaded by hey (Go's "
        "client, through a CONNECT to the sidecar): compare them with each other.",
        "",
        "| row | req/s | p50 ms | p99 ms | CPU µs/req | CPU % | RSS idle MiB | RSS peak MiB "
        "| non-2xx | socket errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        load = row.get("load") or {}
        if row.get("error") and not load:
            lines.append(f"| {_name(row)} | failed: {row['error']} ||||||||| ")
            continue
        lines.append(
            f"| {_name(row)} | {_num(load.get('rps'), 0)} | {_num(load.get('p50_ms'), 2)} "
            f"| {_num(load.get('p99_ms'), 2)} | {_num(row.get('cpu_us_per_req'), 0)} "
            f"| {_num(row.get('cpu_percent'), 0)} | {_num(_mib(row.get('rss_idle')))} "
            f"| {_num(_mib(row.get('rss_peak')))} "
            f"| {_num(load.get('non2xx'))} | {_num(load.get('socket_errors'))} |"
        )
    lines += [
        "",
        f"Latency at c=1 (added = the row's minus direct's) and {s['transfer_mib']:g} MiB "
        f"streamed through with curl (MB = 10^6 bytes; RSS growth = the proxy's peak minus "
        f"its RSS before; a transfer is stopped after {s['transfer_budget']:g} s):",
        "",
        "| row | c=1 p50 ms | c=1 p99 ms | added p50 ms | added p99 ms | upload MB/s "
        "| upload RSS growth MiB | download MB/s | download RSS growth MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        c1 = row.get("c1") or {}
        up, up_rss = _transfer(row, "upload")
        down, down_rss = _transfer(row, "download")
        lines.append(
            f"| {_name(row)} | {_num(c1.get('p50_ms'), 3)} | {_num(c1.get('p99_ms'), 3)} "
            f"| {_num(row.get('c1_added_p50_ms'), 3)} | {_num(row.get('c1_added_p99_ms'), 3)} "
            f"| {up} | {up_rss} | {down} | {down_rss} |"
        )
    lines += [
        "",
        f"Token churn: tokens living {s['churn_ttl']:g} s, c={s['connections']} for "
        f"{s['churn_duration']:g} s against an upstream that refuses expired tokens (a "
        "Python server on the load CPU: compare these rows with each other, not with the "
        "first table):",
        "",
        "| row | req/s | p99 ms | requests | errors seen by the client | IdP calls |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["churn"]:
        if row.get("error"):
            lines.append(f"| {row['name']} | failed: {row['error']} ||||| ")
            continue
        lines.append(
            f"| {row['name']} | {_num(row['rps'], 0)} | {_num(row['load']['p99_ms'], 2)} "
            f"| {_num(row['requests'])} | {_num(row['errors'])} | {_num(row['idp_calls'])} |"
        )
    lines += [
        "",
        "The sidecar's targets, from this run (information, never asserted):",
        "",
        "| target | value | goal | |",
        "|---|---:|---:|---|",
    ]
    for t in result["targets"]:
        verdict = {True: "met", False: "missed", None: "no data"}[t["met"]]
        lines.append(f"| {t['target']} | {_num(t['value'], 2)} | {t['goal']} | {verdict} |")
    problems = result.get("problems") or []
    if problems:
        lines += ["", "Problems:", ""] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], directory: Path) -> Path:
    """``<stamp>.json`` and ``<stamp>.md`` in ``directory``, copied to ``latest.*``."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = result["stamp"]
    text = markdown(result)
    data = json.dumps(result, indent=2, sort_keys=False) + "\n"
    for name in (f"{stamp}-{result['mode']}", "latest"):
        (directory / f"{name}.json").write_text(data)
        (directory / f"{name}.md").write_text(text)
    return directory / f"{stamp}-{result['mode']}.json"
