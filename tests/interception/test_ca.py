"""The interception CA (``sidecar ca init|export``, generated once into state_dir) and the
leaves it signs (EC P-256, SAN exactly the host, short validity, cached, renewed ahead)."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from sidecar.cli import main
from sidecar.config.errors import SetupError
from sidecar.config.interception import Interception
from sidecar.interception import leaves
from sidecar.interception.ca import generate_ca, load_or_create_ca, read_ca
from sidecar.interception.intercept import build_interceptor
from sidecar.interception.leaves import LeafCache, mint_leaf
from sidecar.metrics import Metrics
from tests.helpers.config_files import base, write
from tests.helpers.sidecars import SidecarFactory


def test_ca_init_writes_a_secret_pair(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "secret"
    assert main(["ca", "init", "--out", str(out)]) == 0
    assert (out / "tls.key").stat().st_mode & 0o777 == 0o600
    ca = read_ca(out / "tls.crt", out / "tls.key")  # the key is the certificate's
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0
    # A second init never replaces a CA that apps may already trust.
    assert main(["ca", "init", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


def test_ca_export_prints_the_ca_generated_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    data = base() | {"interception": {"state_dir": str(state)}}
    config = write(tmp_path / "sidecar.yaml", yaml.safe_dump(data))
    assert main(["ca", "export", "--config", str(config)]) == 0
    first = capsys.readouterr().out
    assert first.startswith("-----BEGIN CERTIFICATE-----")
    assert main(["ca", "export", "--config", str(config)]) == 0
    assert capsys.readouterr().out == first  # generated once, then reused
    assert (state / "tls.crt").read_text() == first


def test_ca_export_without_interception_says_how(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write(tmp_path / "sidecar.yaml", yaml.safe_dump(base()))
    assert main(["ca", "export", "--config", str(config)]) == 2
    assert "add an `interception:` block" in capsys.readouterr().err


def test_configured_files_are_used(tmp_path: Path) -> None:
    out = tmp_path / "secret"
    assert main(["ca", "init", "--out", str(out)]) == 0
    block = Interception(
        ca_cert_file=out / "tls.crt", ca_key_file=out / "tls.key", state_dir=tmp_path / "no"
    )
    interceptor = build_interceptor(block, Metrics())
    assert interceptor is not None
    assert interceptor.leaves.ca.cert_pem() == (out / "tls.crt").read_bytes()
    assert not (tmp_path / "no").exists()  # nothing generated


def test_unwritable_state_dir_stops_the_start(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SetupError, match=r"interception\.state_dir .* not writable"):
        build_interceptor(Interception(state_dir=blocker / "state"), Metrics())


async def test_sidecar_refuses_to_start_without_a_writable_state_dir(
    make_sidecar: SidecarFactory, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SetupError, match="not writable"):
        await make_sidecar(interception={"state_dir": str(blocker / "state")})


def test_mismatched_pair_is_refused(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    main(["ca", "init", "--out", str(one)])
    main(["ca", "init", "--out", str(two)])
    with pytest.raises(SetupError, match="is not the key of"):
        load_or_create_ca(one / "tls.crt", two / "tls.key", tmp_path)


@pytest.mark.parametrize(("host", "kind"), [("api.moex.com", x509.DNSName),
                                             ("10.1.2.3", x509.IPAddress)])
def test_leaf_names_exactly_the_host(host: str, kind: type) -> None:
    ca = generate_ca()
    cert, key = mint_leaf(ca, host)
    assert isinstance(key.curve, ec.SECP256R1)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert len(list(san)) == 1
    assert [str(v) for v in san.get_values_for_type(kind)] == [host]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert datetime.timedelta(days=2) < lifetime < datetime.timedelta(days=8)
    assert cert.issuer == ca.cert.subject
    ca.cert.public_key().verify(  # type: ignore[union-attr, call-arg]
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm)
    )


def test_leaves_are_cached_then_renewed_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = LeafCache(generate_ca())
    first = cache.context_for("api.moex.com")
    assert cache.context_for("API.moex.com.") is first
    assert isinstance(first, ssl.SSLContext)
    # A leaf with less than RENEW_BEFORE left is replaced by a fresh one.
    monkeypatch.setattr(leaves, "RENEW_BEFORE", leaves.LEAF_VALIDITY)
    assert cache.context_for("api.moex.com") is not first


def test_config_block_fields(tmp_path: Path) -> None:
    (tmp_path / "x").write_text("")
    with pytest.raises(ValueError, match="go together"):
        Interception(ca_cert_file=tmp_path / "x")
    assert yaml.safe_dump(Interception().model_dump(mode="json"))
