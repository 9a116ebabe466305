"""The Kubernetes manifests under deploy/kubernetes/, read as the deploy tests check them:
resources by kind and name, the demo pod and its sidecar container, the sidecar's config
from its ConfigMap, and the tools the checks run."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def resources() -> list[dict[str, Any]]:
    docs = []
    for path in manifest_files():
        docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return docs


def resource(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [r for r in resources() if r["kind"] == kind and name in (None, r["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    return resource("Deployment")["spec"]["template"]["spec"]


def sidecar_container() -> dict[str, Any]:
    [container] = [c for c in pod_spec()["initContainers"] if c["name"] == "authsidecar"]
    return container


def sidecar_config_text() -> str:
    return resource("ConfigMap", "authsidecar-config")["data"]["sidecar.yaml"]


def sidecar_config() -> dict[str, Any]:
    return yaml.safe_load(sidecar_config_text())


def secret_paths(node: Any) -> list[str]:
    """Every ``*_file`` value in a config tree."""
    if isinstance(node, dict):
        out = []
        for key, value in node.items():
            if key.endswith("_file") and isinstance(value, str):
                out.append(value)
            else:
                out += secret_paths(value)
        return out
    if isinstance(node, list):
        return [p for item in node for p in secret_paths(item)]
    return []


def port_of(container: dict[str, Any], name_or_number: str | int) -> int:
    if isinstance(name_or_number, int):
        return name_or_number
    [port] = [p["containerPort"] for p in container["ports"] if p["name"] == name_or_number]
    return port


def venv_tool(name: str) -> str | None:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SIDECAR_")}
