"""``sidecar doctor``: why can't this pod reach the API? Each upstream checked step by step
over the network (DNS, TCP, TLS, client certificate, clock, token endpoint, one login, an
optional probe), each failure explained with its fix."""

from __future__ import annotations

import sys

from sidecar.config import Config
from sidecar.doctor import report
from sidecar.doctor.report import Step
from sidecar.doctor.steps import check_upstream

__all__ = ["Step", "diagnose", "run_doctor"]

EXIT_FAILED = 1


async def diagnose(config: Config, upstream: str | None = None,
                   probe: str | None = None) -> list[Step]:
    """Every step of every upstream (or of ``upstream``), in config order."""
    steps: list[Step] = []
    for name, cfg in config.upstreams.items():
        if upstream is None or name == upstream:
            steps += await check_upstream(name, cfg, probe)
    return steps


async def run_doctor(config: Config, *, upstream: str | None, probe: str | None,
                     as_json: bool) -> int:
    if upstream is not None and upstream not in config.upstreams:
        print(f"no upstream {upstream!r}; the config has: {', '.join(config.upstreams)}",
              file=sys.stderr)
        return 2
    steps = await diagnose(config, upstream, probe)
    print(report.as_json(steps) if as_json else report.as_table(steps))
    return EXIT_FAILED if report.failed(steps) else 0
