"""``sidecar run | check | sandbox``. User mistakes exit 2 with a clear message, no traceback."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog
import yaml

from sidecar import __version__, logs
from sidecar.config import Config, ConfigError, config_warnings, load_config, redacted
from sidecar.config.errors import SetupError
from sidecar.sandbox.ports import ROLES, Ports

EXIT_USAGE = 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sidecar", description=__doc__)
    parser.add_argument("--version", action="version", version=f"authsidecar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the sidecar")
    run.add_argument("--config", help="YAML config file (default: $SIDECAR_CONFIG)")
    check = commands.add_parser("check", help="validate a config and print it, secrets masked")
    check.add_argument("--config", help="YAML config file (default: $SIDECAR_CONFIG)")
    sandbox = commands.add_parser(
        "sandbox", help="start local emulators of the APIs with the sidecar in front"
    )
    sandbox.add_argument("--dir", default=".sandbox", help="where certificates and config go")
    for field in dataclasses.fields(Ports):
        sandbox.add_argument(
            f"--{field.name}-port", type=int, default=field.default,
            help=f"{ROLES[field.name]} (default: %(default)s; 0: any free port)",
        )
    args = parser.parse_args(argv)

    try:
        if args.command == "check":
            config = load_config(args.config)
            print(yaml.safe_dump(redacted(config), sort_keys=False), end="")
            for line in config_warnings(config):
                print(f"warning: {line}", file=sys.stderr)
            return 0
        if args.command == "run":
            path = args.config or os.environ.get("SIDECAR_CONFIG", "")
            config = load_config(path)
            logs.configure_for(config)
            for line in config_warnings(config):
                structlog.get_logger("sidecar").warning("config_warning", problem=line)
            return _run_until_signalled(lambda signals: _serve(config, path, signals))

        logs.configure("info", "console")
        where = Path(args.dir).resolve()
        from sidecar.sandbox.demo import run_sandbox  # only the sandbox needs the emulators

        fields = dataclasses.fields(Ports)
        ports = Ports(**{f.name: getattr(args, f"{f.name}_port") for f in fields})
        return _run_until_signalled(
            lambda signals: run_sandbox(where, signals.stop, ports)
        )
    except ConfigError as exc:
        print("config error:", file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        return EXIT_USAGE
    except SetupError as exc:
        print(f"setup error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"cannot start: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE


class Signals:
    """What the process was told: SIGTERM drains gracefully, SIGINT (Ctrl-C) stops now."""

    def __init__(self) -> None:
        self.stop = asyncio.Event()
        self.graceful = False

    def terminate(self) -> None:
        self.graceful = True
        self.stop.set()

    def interrupt(self) -> None:
        self.stop.set()


async def _serve(config: Config, config_path: str, signals: Signals) -> None:
    from sidecar.app import Sidecar
    from sidecar.reload import Reloader

    sidecar = Sidecar(config)
    reloader = Reloader(sidecar, config_path, interval=config.reload.interval)
    try:
        await sidecar.start()
        # Everything built at start lives as long as the process: keep it out of the cyclic
        # collector's scans, so its pauses stay short under load.
        gc.collect()
        gc.freeze()
        if config.reload.watch:
            reloader.start()
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGHUP, lambda: reloader.trigger("SIGHUP")
        )
        await signals.stop.wait()
        await reloader.stop()
        if signals.graceful:
            await sidecar.drain()
    finally:
        await sidecar.stop()


def _run_until_signalled(body: Callable[[Signals], Awaitable[None]]) -> int:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())

    async def runner() -> None:
        signals = Signals()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, signals.terminate)
        loop.add_signal_handler(signal.SIGINT, signals.interrupt)
        await body(signals)

    asyncio.run(runner())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
