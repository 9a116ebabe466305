"""CMS (PKCS#7) signature checks for the sandbox's emulated IdPs, by the real ``openssl cms``.

``cryptography`` can make CMS signatures but not verify them, so the emulators ask the OpenSSL
command line, as a relying party would. Verification is real: the signature over the content,
and the signer's chain up to the sandbox CA.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509


class CmsInvalid(Exception):
    """The signature does not verify; ``reason`` says why (OpenSSL's words)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class VerifiedCms:
    content: bytes  # the signed bytes (the encapsulated content, or the detached one given)
    signer: x509.Certificate


async def verify_cms(
    signature_der: bytes, *, ca_file: Path, detached_content: bytes | None = None
) -> VerifiedCms:
    """Verify a DER CMS SignedData. ``detached_content``: the data of a detached signature;
    None: the signature must carry its content (attached)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise CmsInvalid("openssl is not installed: the sandbox cannot verify signatures")
    with tempfile.TemporaryDirectory(prefix="sandbox-cms-") as tmp:
        work = Path(tmp)
        (work / "sig.der").write_bytes(signature_der)
        args = [
            openssl, "cms", "-verify", "-binary", "-inform", "DER", "-in", str(work / "sig.der"),
            "-CAfile", str(ca_file), "-purpose", "any",
            "-signer", str(work / "signer.pem"), "-out", str(work / "content"),
        ]
        if detached_content is not None:
            (work / "data").write_bytes(detached_content)
            args += ["-content", str(work / "data")]
        proc = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        if proc.returncode != 0:
            lines = [ln for ln in err.decode(errors="replace").splitlines() if ln.strip()]
            raise CmsInvalid(_reason(lines[-1]) if lines else f"openssl exited {proc.returncode}")
        content = (work / "content").read_bytes()
        signer = x509.load_pem_x509_certificates((work / "signer.pem").read_bytes())[0]
    if detached_content is not None and content != detached_content:
        raise CmsInvalid("signed content differs from the data")
    return VerifiedCms(content=content, signer=signer)


def _reason(line: str) -> str:
    """OpenSSL's error line without its codes: "content verify error", "Verify error: …"."""
    if "Verify error:" in line:
        return "certificate " + line.split("Verify error:", 1)[1].strip()
    found = re.search(r"routines:\w+:([^:]+):", line)
    return found.group(1).strip() if found else line.strip()
