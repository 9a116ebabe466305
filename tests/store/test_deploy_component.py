"""deploy/kubernetes/components/store: rendered over the base by kustomize, it adds the store
variables (which the config accepts), the key Secret mounted in the sidecar, and Redis egress."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config.models import Config
from sidecar.config.sources import EnvOverrides

ROOT = Path(__file__).resolve().parents[2]


def _render(tmp_path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    shutil.copytree(ROOT / "deploy" / "kubernetes", tmp_path / "base")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../base"], "components": ["../base/components/store"],
    }))
    out = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True,
                         check=True, timeout=60)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_component_adds_store_config_key_secret_and_redis_egress(tmp_path: Path) -> None:
    docs = _render(tmp_path)
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    deployment = by_kind[("Deployment", "authsidecar-demo")]
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    sidecar = pod["initContainers"][0]
    env = {e["name"]: e["value"] for e in sidecar["env"]}
    assert env["SIDECAR_STORE__TYPE"] == "redis"
    mounts = {m["mountPath"]: m["name"] for m in sidecar["volumeMounts"]}
    store_mount = mounts["/run/secrets/store"]
    volume = next(v for v in pod["volumes"] if v["name"] == store_mount)
    secret = by_kind[("Secret", volume["secret"]["secretName"])]
    for variable in ("SIDECAR_STORE__ENCRYPTION_KEY_FILE", "SIDECAR_STORE__PASSWORD_FILE"):
        path = Path(env[variable])
        assert path.parent == Path("/run/secrets/store") and path.name in secret["stringData"]
    # Every variable names a real field of the store block.
    values = EnvOverrides(Config, env, {})()
    assert set(values["store"]) == {
        "type", "url", "username", "password_file", "encryption_key_file",
    }
    egress = by_kind[("NetworkPolicy", "authsidecar-demo")]["spec"]["egress"]
    assert any(p["port"] == 6379 for rule in egress for p in rule.get("ports", []))
