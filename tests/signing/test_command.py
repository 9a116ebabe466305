"""External signers: GOST R 34.10-2012 through OpenSSL's GOST engine, and failure handling."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sidecar.config.auth import CommandSignerConfig, CommandSigning
from sidecar.signing import SigningError, make_signer


def _gost_available() -> bool:
    openssl = shutil.which("openssl")
    if openssl is None:
        return False
    probe = subprocess.run([openssl, "engine", "gost", "-t"], capture_output=True, text=True)
    return probe.returncode == 0 and "available" in probe.stdout


def _command(**kw: object) -> CommandSigning:
    return CommandSigning(type="command", command=CommandSignerConfig(**kw))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def gost_identity(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if not _gost_available():
        pytest.skip("OpenSSL's GOST engine (Debian libengine-gost-openssl) is not installed; "
                    "`make system-deps` installs it")
    work = tmp_path_factory.mktemp("gost")
    key, cert = work / "key.pem", work / "cert.pem"
    subprocess.run(["openssl", "genpkey", "-engine", "gost", "-algorithm", "gost2012_256",
                    "-pkeyopt", "paramset:A", "-out", str(key)], check=True, capture_output=True)
    subprocess.run(["openssl", "req", "-engine", "gost", "-new", "-x509", "-key", str(key),
                    "-out", str(cert), "-subj", "/CN=gost-user", "-days", "30"],
                   check=True, capture_output=True)
    return key, cert


@pytest.mark.parametrize("detached", [True, False])
async def test_gost_signature_verifies_with_openssl(
    gost_identity: tuple[Path, Path], tmp_path: Path, detached: bool
) -> None:
    key, cert = gost_identity
    argv = ["openssl", "cms", "-engine", "gost", "-sign", "-binary", "-signer", str(cert),
            "-inkey", str(key), "-outform", "DER"]
    if not detached:
        argv.append("-nodetach")
    signer = make_signer(_command(argv=argv), detached_default=detached)
    data = b"MicexPassportCert+/value==\n"
    der = await signer.sign(data)
    (tmp_path / "sig").write_bytes(der)
    (tmp_path / "data").write_bytes(data)
    verify = ["openssl", "cms", "-engine", "gost", "-verify", "-binary", "-inform", "DER",
              "-in", str(tmp_path / "sig"), "-noverify", "-out", str(tmp_path / "out")]
    if detached:
        verify += ["-content", str(tmp_path / "data")]
    result = await asyncio.to_thread(subprocess.run, verify, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Verification successful" in result.stderr
    assert (tmp_path / "out").read_bytes() == data
    printed = await asyncio.to_thread(
        subprocess.run,
        ["openssl", "cms", "-engine", "gost", "-cmsout", "-print", "-inform", "DER",
         "-in", str(tmp_path / "sig")],
        capture_output=True, text=True,
    )
    assert "1.2.643.7.1.1.1.1" in printed.stdout or "GOST R 34.10-2012" in printed.stdout


async def test_files_and_base64_output_with_line_breaks(tmp_path: Path) -> None:
    # A stand-in for `csptest -base64 -in {in} -out {out}`: writes wrapped base64 to a file.
    script = tmp_path / "fake_signer.py"
    script.write_text(
        "import base64, sys\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "text = base64.encodebytes(b'SIG:' + data).decode()\n"
        "open(sys.argv[2], 'w').write(text)\n"
    )
    signer = make_signer(
        _command(argv=[sys.executable, str(script), "{in}", "{out}"], output="base64"),
        detached_default=True,
    )
    assert await signer.sign(b"x" * 200) == b"SIG:" + b"x" * 200


async def test_failure_reports_exit_code_and_stderr_but_never_the_data_or_pin() -> None:
    code = (
        "import sys; d = sys.stdin.read(); "
        "sys.stderr.write('bad PIN s3cret-pin for data ' + d + ' in container'); sys.exit(3)"
    )
    signer = make_signer(
        _command(argv=[sys.executable, "-c", code, "--pin={pin}"], pin="s3cret-pin"),
        detached_default=True,
    )
    with pytest.raises(SigningError) as caught:
        await signer.sign(b"passport-token-value")
    reason = caught.value.reason
    assert "exited 3" in reason and "bad PIN" in reason and "in container" in reason
    assert "s3cret-pin" not in reason and "passport-token-value" not in reason


async def test_hanging_signer_is_killed_at_the_timeout() -> None:
    signer = make_signer(
        _command(argv=[sys.executable, "-c", "import time; time.sleep(60)"], timeout=0.5),
        detached_default=True,
    )
    started = time.monotonic()
    with pytest.raises(SigningError, match=r"did not finish within 0\.5 s"):
        await signer.sign(b"x")
    assert time.monotonic() - started < 3


async def test_missing_program_and_garbage_output() -> None:
    with pytest.raises(SigningError, match="cannot start signer"):
        await make_signer(_command(argv=["/nonexistent/signer"]), detached_default=True).sign(b"x")
    garbage = make_signer(
        _command(argv=[sys.executable, "-c", "print('not base64 !!')"], output="base64"),
        detached_default=True,
    )
    with pytest.raises(SigningError, match="not base64"):
        await garbage.sign(b"x")


async def test_signing_does_not_block_the_event_loop() -> None:
    signer = make_signer(
        _command(argv=[sys.executable, "-c", "import time,sys; time.sleep(0.5); print('AA==')"],
                 output="base64"),
        detached_default=True,
    )
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    task = asyncio.create_task(ticker())
    await signer.sign(b"x")
    task.cancel()
    assert ticks >= 5


async def test_a_cancelled_signing_kills_the_signer(tmp_path: Path) -> None:
    import os

    pid_file = tmp_path / "pid"
    code = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    signer = make_signer(_command(argv=[sys.executable, "-c", code], timeout=30),
                         detached_default=True)
    task = asyncio.create_task(signer.sign(b"x"))
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text():
            break
        await asyncio.sleep(0.05)
    pid = int(pid_file.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone: no signer left holding a token device


def test_pin_placeholder_needs_a_pin() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="give pin or pin_file"):
        CommandSignerConfig(argv=["cryptcp", "-pin", "{pin}"])


# A signer that reports what it was given: its argv, its environment, and the PIN file's mode
# and content as it saw them during the call.
REPORTING_SIGNER = """
import json, os, stat, sys
report = {"argv": sys.argv, "env": dict(os.environ), "pin_files": {}}
for arg in sys.argv[2:]:
    if os.path.isfile(arg):
        st = os.stat(arg)
        report["pin_files"][arg] = {
            "mode": stat.S_IMODE(st.st_mode),
            "dir_mode": stat.S_IMODE(os.stat(os.path.dirname(arg)).st_mode),
            "content": open(arg).read(),
        }
open(sys.argv[1], "w").write(json.dumps(report))
sys.stdout.write("AA==")
"""


def _gone(path: str) -> bool:
    return not os.path.exists(path)


async def test_pin_file_keeps_the_pin_out_of_argv_and_is_removed_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SIDECAR_MARKER_SECRET", "must-not-leak")
    script, report_file = tmp_path / "signer.py", tmp_path / "report.json"
    script.write_text(REPORTING_SIGNER)
    signer = make_signer(
        _command(
            argv=[sys.executable, str(script), str(report_file), "{pin_file}"],
            pin="s3cret-pin",
            output="base64",
            env={"OPENSSL_CONF": "/etc/ssl/gost.cnf"},
        ),
        detached_default=True,
    )
    assert await signer.sign(b"x") == b"\x00"
    report = json.loads(report_file.read_text())
    assert not any("s3cret-pin" in arg for arg in report["argv"])
    (pin_path, seen), = report["pin_files"].items()
    assert seen == {"mode": 0o600, "dir_mode": 0o700, "content": "s3cret-pin"}
    assert _gone(pin_path) and _gone(os.path.dirname(pin_path))
    # A minimal environment: the sidecar's own variables stay with the sidecar.
    env = report["env"]
    assert "SIDECAR_MARKER_SECRET" not in env
    assert env["OPENSSL_CONF"] == "/etc/ssl/gost.cnf"
    assert env.get("PATH") == os.environ.get("PATH", os.defpath)
    # LC_CTYPE: a Python child may set it itself (PEP 538 locale coercion).
    assert set(env) <= {"PATH", "HOME", "LANG", "OPENSSL_CONF", "LC_CTYPE"}


async def test_pin_file_is_removed_when_the_signer_fails(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    code = f"import sys; open({str(seen)!r}, 'w').write(sys.argv[1]); sys.exit(4)"
    signer = make_signer(
        _command(argv=[sys.executable, "-c", code, "{pin_file}"], pin="s3cret-pin"),
        detached_default=True,
    )
    with pytest.raises(SigningError, match="exited 4"):
        await signer.sign(b"x")
    assert _gone(seen.read_text())


def test_pin_file_placeholder_needs_a_pin() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="give pin or pin_file"):
        CommandSignerConfig(argv=["openssl", "-passin", "file:{pin_file}"])
