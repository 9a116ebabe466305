"""An external signer program: OpenSSL with the GOST engine, CryptoPro ``cryptcp``/``csptest``.

The data goes to stdin (or to a temporary ``{in}`` file), the signature comes from stdout (or
a ``{out}`` file). ``{pin_file}`` is a file holding the PIN; ``{pin}`` puts the PIN itself in
argv, where any local user can read it (``/proc/<pid>/cmdline``, ``ps``). A failure reports
the exit code and the end of stderr; the data, the PIN and the keys never reach a log or an
error. The program gets a minimal environment, not the sidecar's (which holds secrets).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import os
import re
import tempfile
from pathlib import Path

import structlog

from sidecar import logs
from sidecar.config.auth import CommandSignerConfig
from sidecar.signing.base import SigningError

log = structlog.get_logger("sidecar.signing")

_STDERR_TAIL = 400
_INHERITED_ENV = ("PATH", "HOME", "LANG")  # what a signer needs to run; the rest is config


class CommandSigner:
    def __init__(self, cfg: CommandSignerConfig, detached: bool) -> None:
        self.detached = detached
        self._cfg = cfg
        self._pin = cfg.pin.get_secret_value() if cfg.pin else None
        if self._pin:
            logs.secrets.add(self._pin)
        self._program = Path(cfg.argv[0]).name
        self._uses_pin_file = any("{pin_file}" in a for a in cfg.argv)
        if any("{pin}" in a for a in cfg.argv):
            log.warning(
                "signer_pin_in_argv",
                program=self._program,
                hint="use {pin_file}: a PIN in argv is visible in /proc/<pid>/cmdline",
            )

    async def sign(self, data: bytes) -> bytes:
        with tempfile.TemporaryDirectory(prefix="sidecar-sign-") as tmp:
            work = Path(tmp)
            in_path, out_path = work / "data", work / "signature"
            pin_path = work / "pin"
            argv = [self._fill(a, in_path, out_path, pin_path) for a in self._cfg.argv]
            if self._uses_pin_file:
                # The directory is 0700 (mkdtemp) and removed with the file after the call.
                await asyncio.to_thread(_write_private, pin_path, self._pin or "")
            uses_in = any("{in}" in a for a in self._cfg.argv)
            uses_out = any("{out}" in a for a in self._cfg.argv)
            if uses_in:
                await asyncio.to_thread(in_path.write_bytes, data)
            stdout, stderr, code = await self._run(argv, None if uses_in else data)
            if code != 0:
                raise SigningError(
                    f"signer {self._program} exited {code}: {self._tail(stderr, data)}"
                )
            raw = await asyncio.to_thread(out_path.read_bytes) if uses_out else stdout
        if not raw:
            raise SigningError(f"signer {self._program} wrote no signature")
        return self._decode(raw)

    async def _run(self, argv: list[str], stdin: bytes | None) -> tuple[bytes, bytes, int]:
        env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
        env.setdefault("PATH", os.defpath)
        env.update(self._cfg.env)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,  # a timeout kills the whole process group
            )
        except OSError as exc:
            raise SigningError(f"cannot start signer {self._program}: {exc.strerror}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), self._cfg.timeout)
        except TimeoutError:
            await _kill(proc)
            raise SigningError(
                f"signer {self._program} did not finish within {self._cfg.timeout:g} s"
            ) from None
        except BaseException:
            # Cancelled (shutdown, reload): never leave a signer running, holding a token device.
            await asyncio.shield(_kill(proc))
            raise
        return out, err, proc.returncode or 0

    def _fill(self, arg: str, in_path: Path, out_path: Path, pin_path: Path) -> str:
        arg = arg.replace("{in}", str(in_path)).replace("{out}", str(out_path))
        if "{pin_file}" in arg:
            if self._pin is None:
                raise SigningError("signer argv uses {pin_file} but no pin is configured")
            arg = arg.replace("{pin_file}", str(pin_path))
        if "{pin}" in arg:
            if self._pin is None:
                raise SigningError("signer argv uses {pin} but no pin is configured")
            arg = arg.replace("{pin}", self._pin)
        return arg

    def _tail(self, stderr: bytes, data: bytes) -> str:
        text = stderr.decode(errors="replace")
        # The signed data is a login secret (a Passport token, a challenge): cut it out too.
        for secret in (data.decode(errors="replace"), self._pin):
            if secret:
                text = text.replace(secret, "***")
        text = " ".join(text.split())
        return text[-_STDERR_TAIL:] or "(no stderr)"

    def _decode(self, raw: bytes) -> bytes:
        output = self._cfg.output
        if output == "der":
            return raw
        text = raw.decode("ascii", errors="replace")
        if output == "pem":
            text = re.sub(r"-----(BEGIN|END)[^-]+-----", "", text)
        try:
            # csptest -base64 and certutil write line breaks: strip all whitespace first.
            return base64.b64decode("".join(text.split()), validate=True)
        except (binascii.Error, ValueError):
            raise SigningError(
                f"signer {self._program} output is not {output} as configured"
            ) from None

    async def close(self) -> None:
        return None


def _write_private(path: Path, text: str) -> None:
    """Created 0600 from the start: never readable by others, not even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, 9)  # the whole group: wrappers often fork the real signer
    await proc.wait()
