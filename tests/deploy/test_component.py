"""deploy/kubernetes/components/: the kustomize components that add the sidecar to any app
Deployment, rendered with the real kustomize onto a sample app, and checked against the demo
Deployment the other tests check (same probes, resources and hardening)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from sidecar.admin import AdminRoutes
from tests.helpers.manifests import pod_spec, port_of, sidecar_container, venv_tool

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ROOT / "deploy" / "kubernetes" / "components"
PROXY_ENV = ("HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy")

SAMPLE_APP = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
  labels: {app: shop, authsidecar.io/inject: "true"}
spec:
  selector: {matchLabels: {app: shop}}
  template:
    metadata: {labels: {app: shop}}
    spec:
      initContainers:
        - {name: migrate, image: "registry.example.com/shop:1", args: [migrate]}
      containers:
        - name: web
          image: registry.example.com/shop:1
          env: [{name: SHOP_MODE, value: prod}]
          volumeMounts: [{name: data, mountPath: /data}]
        - {name: metrics, image: "registry.example.com/exporter:1", env: []}
      volumes: [{name: data, emptyDir: {}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: db, labels: {app: db}}
spec:
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: pg, image: "postgres:16"}]
"""


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def render(tmp_path: Path, component: str, app: str = SAMPLE_APP) -> subprocess.CompletedProcess:
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed")
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "app.yaml").write_text(app, encoding="utf-8")
    (tmp_path / "sidecar.yaml").write_text("listen: {proxy: 127.0.0.1:8080}\n", encoding="utf-8")
    (tmp_path / "password.txt").write_text("s3cret\n", encoding="utf-8")
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": ["app.yaml"],
        # kustomize refuses absolute paths to components; a relative one may leave the root.
        "components": [os.path.relpath(COMPONENTS / component, tmp_path)],
        "configMapGenerator": [{"name": "authsidecar-config", "files": ["sidecar.yaml"]}],
        "secretGenerator": [{"name": "authsidecar-secrets",
                             "files": ["moex-password=password.txt"]}],
        "images": [{"name": "authsidecar", "newName": "registry.example.com/authsidecar",
                    "newTag": "0.1.0"}],
    }), encoding="utf-8")
    return subprocess.run([*command, str(tmp_path)], capture_output=True, text=True, timeout=60)


def rendered(tmp_path: Path, component: str) -> dict[str, dict[str, Any]]:
    done = render(tmp_path, component)
    assert done.returncode == 0, done.stderr
    return {(d["kind"], d["metadata"]["name"].split("-")[0] if d["kind"] != "Deployment"
             else d["metadata"]["name"]): d for d in yaml.safe_load_all(done.stdout) if d}


def pod(docs: dict[Any, dict[str, Any]], name: str = "shop") -> dict[str, Any]:
    return docs["Deployment", name]["spec"]["template"]["spec"]


def probes(container: dict[str, Any]) -> dict[str, Any]:
    """The probes with named ports resolved to numbers (the component's names differ)."""
    out = {}
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = {**container[kind], "httpGet": dict(container[kind]["httpGet"])}
        probe["httpGet"]["port"] = port_of(container, probe["httpGet"]["port"])
        out[kind] = probe
    return out


def test_component_adds_a_native_sidecar_to_the_labelled_deployment(tmp_path: Path) -> None:
    docs = rendered(tmp_path, "authsidecar")
    spec = pod(docs)
    assert pod(docs, "db") == {"containers": [{"name": "pg", "image": "postgres:16"}]}

    # The sidecar: an init container with restartPolicy: Always, ahead of the app's own init
    # containers (which may call the APIs through it too).
    assert [c["name"] for c in spec["initContainers"]] == ["authsidecar", "migrate"]
    sidecar = spec["initContainers"][0]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == "registry.example.com/authsidecar:0.1.0"
    assert [c["name"] for c in spec["containers"]] == ["web", "metrics"]

    # The same sidecar as the demo Deployment: args, probes, resources, hardening; only the
    # port names differ (an app may have its own "admin" port) and no UID is pinned.
    demo = sidecar_container()
    assert sidecar["args"] == demo["args"]
    assert probes(sidecar) == probes(demo)
    assert sidecar["resources"] == demo["resources"]
    assert sorted(p["containerPort"] for p in sidecar["ports"]) == sorted(
        p["containerPort"] for p in demo["ports"])
    pinned = {"runAsUser", "runAsGroup"}
    assert not pinned & set(sidecar["securityContext"]), "OpenShift assigns the UID"
    assert sidecar["securityContext"] == {
        k: v for k, v in demo["securityContext"].items() if k not in pinned}
    assert "securityContext" not in spec, "the app's pod security context is its own"
    served = set(AdminRoutes(SimpleNamespace()).routes)  # type: ignore[arg-type]
    assert {p["httpGet"]["path"].split("?")[0] for p in probes(sidecar).values()} <= served

    # Volumes: the app's, plus config, secrets and tmp, referring to the generated (hashed)
    # ConfigMap and Secret.
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert set(volumes) == {"data", "authsidecar-config", "authsidecar-secrets", "authsidecar-tmp"}
    assert volumes["authsidecar-config"]["configMap"]["name"] == (
        docs["ConfigMap", "authsidecar"]["metadata"]["name"])
    secret = volumes["authsidecar-secrets"]["secret"]
    assert secret["secretName"] == docs["Secret", "authsidecar"]["metadata"]["name"]
    assert re.fullmatch(r"authsidecar-secrets-[a-z0-9]+", secret["secretName"])
    assert secret["defaultMode"] == 0o444  # any UID can read it; only the sidecar mounts it
    assert volumes["authsidecar-tmp"]["emptyDir"]["medium"] == "Memory"
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    assert mounts["/etc/sidecar"]["readOnly"] and mounts["/run/secrets/authsidecar"]["readOnly"]
    assert mounts["/tmp"]["name"] == "authsidecar-tmp"
    for c in spec["containers"]:
        assert not {m["name"] for m in c.get("volumeMounts", [])} & {
            "authsidecar-config", "authsidecar-secrets"}, f"{c['name']} sees the secrets"

    # The app (the first container) goes through the sidecar; its own env stays.
    env = [(e["name"], e["value"]) for e in spec["containers"][0]["env"]]
    assert env[0] == ("SHOP_MODE", "prod")
    values = dict(env)
    proxy_port = port_of(sidecar, "sidecar-proxy")
    assert values["HTTP_PROXY"] == values["http_proxy"] == f"http://127.0.0.1:{proxy_port}"
    assert values["NO_PROXY"] == values["no_proxy"]
    assert {".svc", ".cluster.local", "127.0.0.1", "localhost"} <= set(
        values["NO_PROXY"].split(","))
    demo_env = {e["name"]: e["value"] for e in _demo_app()["env"]}
    assert {k: values[k] for k in PROXY_ENV} == {k: demo_env[k] for k in PROXY_ENV}
    assert spec["containers"][1]["env"] == []  # only the first container is the app


def test_legacy_component_adds_the_same_sidecar_as_a_second_container(tmp_path: Path) -> None:
    native = pod(rendered(tmp_path / "native", "authsidecar"))
    spec = pod(rendered(tmp_path / "legacy", "authsidecar-legacy"))
    # After the app: kubectl logs/exec still default to it.
    assert [c["name"] for c in spec["containers"]] == ["web", "metrics", "authsidecar"]
    assert [c["name"] for c in spec["initContainers"]] == ["migrate"]
    sidecar = spec["containers"][2]
    assert "restartPolicy" not in sidecar
    assert {**sidecar, "restartPolicy": "Always"} == native["initContainers"][0]
    assert spec["volumes"] == native["volumes"]
    assert spec["containers"][0]["env"] == native["containers"][0]["env"]


def test_an_app_container_without_env_is_refused_with_the_path(tmp_path: Path) -> None:
    """The component's header says so: JSON patches cannot append to a list that is not there."""
    no_env = SAMPLE_APP.replace("          env: [{name: SHOP_MODE, value: prod}]\n", "")
    done = render(tmp_path, "authsidecar", no_env)
    assert done.returncode != 0
    assert "/spec/template/spec/containers/0/env/-" in done.stderr


def test_rendered_components_validate_strictly(tmp_path: Path) -> None:
    validate = venv_tool("kubernetes-validate")
    if not validate:
        pytest.skip("kubernetes-validate not installed (make deploy-check installs it)")
    for component, version in (("authsidecar", "1.29.0"), ("authsidecar-legacy", "1.27.0")):
        done = render(tmp_path / component, component)
        assert done.returncode == 0, done.stderr
        out = tmp_path / f"{component}.yaml"
        out.write_text(done.stdout, encoding="utf-8")
        checked = subprocess.run([validate, "--strict", "-k", version, str(out)],
                                 capture_output=True, text=True, timeout=120)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        for line in checked.stdout.splitlines():
            assert line.startswith("INFO") and " passed " in line, line


def _demo_app() -> dict[str, Any]:

    [app] = pod_spec()["containers"]
    return app
