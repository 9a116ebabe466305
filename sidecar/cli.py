"""``sidecar run | check | doctor | ca | sandbox``. User mistakes exit 2 with a clear message, no
traceback."""

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

from sidecar import __version__, hotpath, logs
from sidecar.config import Config, ConfigError, config_warnings, load_config, redacted
from sidecar.config.errors import SetupError
from sidecar.sandbox.ports import ROLES, Ports

EXIT_USAGE = 2


class _Version(argparse.Action):
    """``--version``: also says which hot path runs (see sidecar/hotpath.py)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"authsidecar {__version__}\nhot path: {hotpath.describe()}")
        parser.exit()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sidecar", description=__doc__)
    parser.add_argument(
        "--version", action=_Version, nargs=0,
        help="show the version and whether the hot path runs compiled, and exit",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the sidecar")
    run.add_argument("--config", help="YAML config file (default: $SIDECAR_CONFIG)")
    check = commands.add_parser(
        "check",
        help="validate a config, build everything `run` builds (no network), print it masked",
    )
    check.add_argument("--config", help="YAML config file (default: $SIDECAR_CONFIG)")
    check.add_argument(
        "--json", action="store_true", help="print {ok, errors, warnings} as JSON (for CI)"
    )
    doctor = commands.add_parser(
        "doctor", help="check each upstream step by step over the network, and say the fix"
    )
    doctor.add_argument("--config", help="YAML config file (default: $SIDECAR_CONFIG)")
    doctor.add_argument("--upstream", help="only this upstream (default: all)")
    doctor.add_argument("--probe", metavar="PATH", help="also send GET PATH to the target")
    doctor.add_argument("--json", action="store_true", help="print the results as JSON")
    ca = commands.add_parser("ca", help="the interception CA: print it, or make one")
    ca_commands = ca.add_subparsers(dest="ca_command", required=True)
    ca_export = ca_commands.add_parser(
        "export", help="print the CA certificate (PEM) that apps must trust"
    )
    ca_export.add_argument("--config", help="YAML config file (default: $SIDECAR_CONFIG)")
    ca_init = ca_commands.add_parser(
        "init", help="make a CA for a Kubernetes Secret: DIR/tls.crt and DIR/tls.key (0600)"
    )
    ca_init.add_argument("--out", required=True, help="directory to write tls.crt, tls.key")
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
            return _check(args.config, as_json=args.json)
        if args.command == "doctor":
            from sidecar.doctor import run_doctor

            config = load_config(args.config)
            logs.configure("error", "console")  # the report is the output
            return asyncio.run(
                run_doctor(config, upstream=args.upstream, probe=args.probe, as_json=args.json)
            )
        if args.command == "ca":
            return _ca(args)
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


def _check(path: str | None, *, as_json: bool) -> int:
    from sidecar.check import Problem, Report, check_config

    logs.configure("error", "console")  # building signers may log; the report is the output
    try:
        config = load_config(path)
    except ConfigError as exc:
        report = Report(errors=[Problem.parse(line) for line in exc.problems])
        config = None
    else:
        report = check_config(config)
    if as_json:
        print(report.as_json())
        return 0 if report.ok else EXIT_USAGE
    if config is not None and report.ok:
        print(yaml.safe_dump(redacted(config), sort_keys=False), end="")
    if not report.ok:
        print("config error:", file=sys.stderr)
        for problem in report.errors:
            print(f"  {problem.line()}", file=sys.stderr)
    for problem in report.warnings:
        print(f"warning: {problem.line()}", file=sys.stderr)
    return 0 if report.ok else EXIT_USAGE


def _ca(args: argparse.Namespace) -> int:
    from sidecar.interception.ca import generate_ca, load_or_create_ca, write_ca

    if args.ca_command == "init":
        out = Path(args.out)
        if (out / "tls.key").exists():
            print(f"{out / 'tls.key'} exists: not replacing a CA apps may trust",
                  file=sys.stderr)
            return EXIT_USAGE
        cert, key = write_ca(generate_ca(), out)
        print(f"wrote {cert} and {key}; e.g. kubectl create secret tls sidecar-ca "
              f"--cert={cert} --key={key}", file=sys.stderr)
        return 0
    config = load_config(args.config)
    block = config.interception
    if block is None:
        print("config error:\n  interception: not configured; add an `interception:` block "
              "(see the README, 'Apps that call https://')", file=sys.stderr)
        return EXIT_USAGE
    # The same CA `run` uses: the configured files, else the one in state_dir (made now if
    # there is none yet, so apps can be given it before the first start).
    ca = load_or_create_ca(block.ca_cert_file, block.ca_key_file, Path(block.state_dir))
    sys.stdout.write(ca.cert_pem().decode())
    return 0


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
