#!/usr/bin/env bash
# make deploy-check: lint the deployment artefacts; any finding exits non-zero.
# - hadolint on the Dockerfile (every level counts, style and info included);
# - kubernetes-validate --strict on every manifest in deploy/kubernetes/, for Kubernetes 1.29
#   (the first release with native sidecars on by default) and for the tool's newest;
# - promtool check rules on the PrometheusRule's groups, when promtool is installed.
#
# kubernetes-validate ships schemas for built-in kinds only. For another kind it prints
# "WARN ... Couldn't find schema for kind K" and still exits 0, and it has no option to skip
# kinds or to load extra schemas. So every such WARN is a finding here, except for exactly
# PodMonitor and PrometheusRule in monitoring.coreos.com/v1 (Prometheus Operator CRDs).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$ROOT/.venv/bin}
MANIFESTS=$ROOT/deploy/kubernetes
ALLOWED_UNKNOWN="Couldn't find schema for kind (PodMonitor|PrometheusRule) with api version monitoring\.coreos\.com/v1 "
status=0

for tool in hadolint kubernetes-validate; do
    [ -x "$BIN/$tool" ] || { echo "deploy-check: $BIN/$tool missing (make deploy-check installs it)" >&2; exit 1; }
done

echo "== hadolint Dockerfile"
if "$BIN/hadolint" --no-color "$ROOT/Dockerfile"; then echo "clean"; else status=1; fi

echo "== kubernetes-validate --strict"
files=()
for f in "$MANIFESTS"/*.yaml; do
    [ "$(basename "$f")" = kustomization.yaml ] || files+=("$f")
done
set +e
out=$("$BIN/kubernetes-validate" --strict -k 1.29.0 -k "$("$BIN/python" -c \
    'from kubernetes_validate.utils import latest_version; print(latest_version())')" \
    "${files[@]}" 2>&1)
rc=$?
set -e
printf '%s\n' "$out" | sed "s|$ROOT/||"
[ "$rc" = 0 ] || status=1
unexpected=$(printf '%s\n' "$out" | grep -E '^(WARN|ERROR|FATAL)' | grep -Ev "$ALLOWED_UNKNOWN" || true)
if [ -n "$unexpected" ]; then
    echo "deploy-check: findings above (only PodMonitor/PrometheusRule may lack a schema)" >&2
    status=1
elif grep -qE "$ALLOWED_UNKNOWN" <<<"$out"; then
    echo "(allowed: kubernetes-validate has no schema for the Prometheus Operator CRDs)"
fi

echo "== promtool check rules (prometheusrule.yaml)"
if command -v promtool >/dev/null; then
    rules=$(mktemp)
    trap 'rm -f "$rules"' EXIT
    "$BIN/python" -c 'import sys, yaml
doc = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
yaml.safe_dump(doc["spec"], sys.stdout, sort_keys=False)' "$MANIFESTS/prometheusrule.yaml" >"$rules"
    promtool check rules "$rules" | sed "s|$rules|prometheusrule.yaml spec|" || status=1
else
    echo "promtool not installed: PromQL not checked (make system-deps installs it)"
fi

if [ "$status" = 0 ]; then echo "deploy-check: passed"; else echo "deploy-check: FAILED" >&2; fi
exit "$status"
