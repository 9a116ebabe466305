"""Hot reload: certificate rotation by symlink swap under load, SIGHUP with good and bad configs."""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from sidecar.app import Sidecar
from sidecar.config import load_config
from sidecar.reload import Reloader
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.load import run_load
from tests.helpers.process import SidecarProcess
from tests.helpers.sidecars import deep_merge

NTB = "http://api.moex.com/ntb"


def _secret_volume(root: Path, version: str, files: dict[str, Path]) -> None:
    """Lay out (or update) a directory the way the kubelet writes a Secret volume."""
    target = root / f"..{version}"
    target.mkdir(parents=True)
    for name, source in files.items():
        shutil.copy(source, target / name)
    tmp = root / "..data_tmp"
    tmp.symlink_to(target.name)
    os.replace(tmp, root / "..data")  # the atomic swap
    for name in files:
        link = root / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")


@pytest.mark.ntb_mtls  # the sandbox NTB API asks for the client certificate
async def test_client_certificate_rotation_under_load(
    sandbox: SandboxStack, sidecar_config: dict[str, Any], tmp_path: Path
) -> None:
    volume = tmp_path / "tls-volume"
    first = sandbox.client_cert
    _secret_volume(volume, "v1", {"tls.crt": first.cert_file, "tls.key": first.key_file})
    config = sidecar_config | {"reload": {"interval": 0.2}}
    config["upstreams"]["moex-ntb"]["tls"] |= {
        "cert_file": str(volume / "tls.crt"), "key_file": str(volume / "tls.key"),
    }
    config_file = tmp_path / "sidecar.yaml"
    config_file.write_text(yaml.safe_dump(config))

    sidecar = Sidecar(load_config(config_file))
    await sidecar.start()
    reloader = Reloader(sidecar, config_file, interval=0.2)
    reloader.start()
    try:
        load = asyncio.create_task(
            run_load(f"http://127.0.0.1:{sidecar.proxy_port}", f"{NTB}/rotate", clients=8,
                     duration=5)
        )
        await asyncio.sleep(1.5)
        rotated = sandbox.pki.issue_client("rotated", "sidecar-rotated")
        _secret_volume(volume, "v2", {"tls.crt": rotated.cert_file, "tls.key": rotated.key_file})
        result = await load

        assert result.non_2xx == 0, (result.statuses, result.errors[:3])
        assert result.body_mismatches == 0
        # Requests after the rotation reach the API with the new certificate.
        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"{NTB}/after", proxy=f"http://127.0.0.1:{sidecar.proxy_port}"
            ) as resp:
                seen = await resp.json()
        assert "CN=sidecar-rotated" in seen["client_cert"]["subject"]
        # The token survived: one login in all.
        assert sandbox.idp.stats()["by_grant"].get("password") == 1
        status = sidecar.upstreams["moex-ntb"].client_cert
        assert status is not None and "sidecar-rotated" in status.subject
    finally:
        await reloader.stop()
        await sidecar.stop(grace=1)


async def test_sighup_rejects_a_broken_config_and_applies_a_good_one(
    sandbox: SandboxStack, sidecar_config: dict[str, Any], tmp_path: Path
) -> None:
    config = sidecar_config | {"reload": {"watch": False}}
    proc = SidecarProcess(config, tmp_path)
    try:
        await proc.start()
        await proc.wait_for("token_obtained")
        proxy = f"http://{proc.proxy}"
        async with aiohttp.ClientSession() as session:

            async def status(url: str) -> int:
                async with session.get(url, proxy=proxy) as resp:
                    await resp.read()
                    return resp.status

            broken = dict(config)
            broken["upstreams"] = {"moex-ntb": {**config["upstreams"]["moex-ntb"],
                                                "target": "not a url"}}
            proc.config_file.write_text(yaml.safe_dump(broken))
            proc.signal(signal.SIGHUP)
            rejected = await proc.wait_for("config_reload_rejected")
            assert "target" in str(rejected["problems"])
            assert await status(f"{NTB}/still-old") == 200

            good = dict(config)
            good["upstreams"] = {"moex-ntb": {**config["upstreams"]["moex-ntb"],
                                              "match": ["api.moex.com", "api2.moex.com"]}}
            proc.config_file.write_text(yaml.safe_dump(good))
            proc.signal(signal.SIGHUP)
            await proc.wait_for("config_reloaded")
            assert await status("http://api2.moex.com/ntb/new-host") == 200
            assert await status(f"{NTB}/old-host") == 200

            async with session.get(f"http://{proc.admin}/metrics") as resp:
                scrape = await resp.text()
        assert 'sidecar_config_reloads_total{result="failure"} 1.0' in scrape
        assert 'sidecar_config_reloads_total{result="success"} 1.0' in scrape
    finally:
        await proc.kill()


async def test_reload_hands_the_token_and_the_rate_limiter_to_the_rebuilt_upstream(
    sandbox: SandboxStack, make_sidecar: Any, sidecar_config: dict[str, Any], tmp_path: Path
) -> None:
    sidecar = await make_sidecar({"rate_limit": {"rps": 5, "burst": 1}})
    before = sidecar.upstreams["moex-ntb"]
    changed = load_config_from(sidecar_config, tmp_path, {
        "rate_limit": {"rps": 5, "burst": 1}, "headers": {"x-added": "1"},
    })
    await sidecar.apply(changed)
    after = sidecar.upstreams["moex-ntb"]
    assert after is not before and after.config.headers == {"x-added": "1"}
    assert after.tokens is before.tokens and after.limiter is before.limiter
    # A different rate gets a new limiter; new credentials a new token source.
    other = load_config_from(sidecar_config, tmp_path, {"rate_limit": {"rps": 2, "burst": 1}})
    await sidecar.apply(other)
    assert sidecar.upstreams["moex-ntb"].limiter is not before.limiter
    assert sidecar.upstreams["moex-ntb"].tokens is before.tokens


def load_config_from(base: dict[str, Any], tmp_path: Path, upstream: dict[str, Any]) -> Any:
    data = deep_merge(base, {"upstreams": {"moex-ntb": upstream}})
    path = tmp_path / "reloaded.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


async def test_a_reload_failing_halfway_leaves_the_running_upstreams_intact(
    sandbox: SandboxStack, make_sidecar: Any, sidecar_config: dict[str, Any], tmp_path: Path
) -> None:
    sidecar = await make_sidecar()
    live = sidecar.upstreams["moex-ntb"]
    token = await live.tokens.get()
    broken_ca = tmp_path / "broken-ca.pem"
    broken_ca.write_text("not a certificate\n")
    # moex-ntb changes (and would take the live token over); "second" cannot load its CA.
    ntb = sidecar_config["upstreams"]["moex-ntb"]
    data = deep_merge(sidecar_config, {"upstreams": {
        "moex-ntb": {"headers": {"x-new": "1"}},
        "second": {**ntb, "match": ["second.example"],
                   "tls": {**ntb["tls"], "ca_file": str(broken_ca)}},
    }})
    from sidecar.config import validate_config
    from sidecar.config.errors import SetupError

    with pytest.raises(SetupError):
        await sidecar.apply(validate_config(data))
    assert sidecar.upstreams["moex-ntb"] is live
    assert await live.tokens.get() is token
    renewal = live.tokens._task  # type: ignore[attr-defined]
    assert renewal is not None and not renewal.done()  # not closed by the failed reload
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{NTB}/still", proxy=f"http://127.0.0.1:{sidecar.proxy_port}"
                               ) as resp:
            assert resp.status == 200


async def test_a_secret_updated_while_a_reload_reads_it_is_reloaded_again(
    sidecar_config: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kubelet can swap a Secret between the moment a reload reads the files and the
    moment it records their state: that update must start another reload."""
    import sidecar.reload as reload_module

    secret = tmp_path / "password"
    secret.write_text("first")
    config = copy.deepcopy(sidecar_config)
    auth = config["upstreams"]["moex-ntb"]["auth"]
    auth.pop("password", None)
    auth["password_file"] = str(secret)
    config_file = tmp_path / "sidecar.yaml"
    config_file.write_text(yaml.safe_dump(config))

    sidecar = Sidecar(load_config(config_file))
    await sidecar.start()
    reloader = Reloader(sidecar, config_file, interval=0.1)
    reloader.start()
    loaded: list[str] = []
    real_load = reload_module.load_config

    def load_then_update(path: Path, environ: Any) -> Any:
        cfg = real_load(path, environ)
        loaded.append(cfg.upstreams["moex-ntb"].auth.password.get_secret_value())
        if len(loaded) == 1:  # the Secret changes right after the first reload read it
            secret.write_text("second, longer")
        return cfg

    monkeypatch.setattr(reload_module, "load_config", load_then_update)
    try:
        secret.write_text("updated")
        for _ in range(50):
            if len(loaded) >= 2:
                break
            await asyncio.sleep(0.1)
        assert loaded[:2] == ["updated", "second, longer"]
    finally:
        await reloader.stop()
        await sidecar.stop(grace=1.0)
