#!/usr/bin/env bash
# make image-check: build the Dockerfile with podman and run the image the way the Kubernetes
# manifests do (non-root uid 10001, read-only root file system, tmpfs at /tmp, no
# capabilities), against `sidecar sandbox` running on this host; then once more under an
# arbitrary UID in group 0, as OpenShift runs it.
#
# No container registry is needed: the base image is Debian bookworm with python3, made with
# debootstrap and imported into podman as localhost/bookworm-python:latest (reused on later
# runs; IMAGE_CHECK_REBUILD_BASE=1 makes it again).
#
# Exit status: 0 passed, 1 failed, 77 skipped: podman cannot run containers on this machine
# (the message says why).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
WORK=${IMAGE_CHECK_DIR:-/var/tmp/authsidecar-image-check}
BASE=localhost/bookworm-python:latest
IMAGE=${IMAGE_CHECK_IMAGE:-localhost/authsidecar:check}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
UID_GID=10001:10001
ANY_UID=1000650000:0  # what OpenShift's restricted SCC would pick: any UID, group 0
CTR=authsidecar-image-check-$$
EXIT_SKIPPED=77

say() { printf 'image-check: %s\n' "$*"; }
fail() { printf 'image-check: FAILED: %s\n' "$*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || fail "needs root (debootstrap, podman storage): run as root or install sudo"
    SUDO=sudo
fi
pod() { $SUDO env ${CONTAINERS_CONF:+CONTAINERS_CONF="$CONTAINERS_CONF"} podman "$@"; }

# ---- tools ------------------------------------------------------------------------------
# podman runs as root (through sudo when needed), so uidmap, slirp4netns and fuse-overlayfs,
# which rootless podman needs, are not. runc is the fallback runtime (see below).
missing=""
for pair in podman:podman debootstrap:debootstrap curl:curl runc:runc; do
    command -v "${pair%%:*}" >/dev/null || missing="$missing ${pair##*:}"
done
if [ -n "$missing" ]; then
    say "installing$missing"
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086  # $missing is a list of package names
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing \
        >/dev/null || fail "apt-get install$missing failed"
fi
[ -x "$VENV/bin/sidecar" ] || fail "$VENV/bin/sidecar not found: run make (it sets up .venv) first"

mkdir -p "$WORK"
SANDBOX_PID=""
cleanup() {
    pod rm -f -t 0 "$CTR" >/dev/null 2>&1 || true
    if [ -n "$SANDBOX_PID" ]; then
        kill "$SANDBOX_PID" 2>/dev/null || true
        wait "$SANDBOX_PID" 2>/dev/null || true
    fi
    $SUDO rm -rf "$WORK/run" "$WORK/sandbox"
}
trap cleanup EXIT

# ---- base image: debootstrap bookworm + python3 ------------------------------------------
if [ "${IMAGE_CHECK_REBUILD_BASE:-0}" = 1 ] || ! pod image exists "$BASE"; then
    say "making $BASE with debootstrap (about a minute)"
    $SUDO rm -rf "$WORK/rootfs"
    $SUDO debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
        bookworm "$WORK/rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log" >&2; fail "debootstrap failed (log: $WORK/debootstrap.log)"; }
    $SUDO rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
    $SUDO tar -C "$WORK/rootfs" -c . | pod import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' - "$BASE" >"$WORK/import.log" 2>&1 \
        || { cat "$WORK/import.log" >&2; fail "podman import failed"; }
    $SUDO rm -rf "$WORK/rootfs"
fi

# ---- can podman run a container here? -----------------------------------------------------
# Tried in order: podman's defaults; then rlimits no higher than this host's hard limits
# (podman asks for more, which needs CAP_SYS_RESOURCE); then those with runc instead of crun
# (crun refuses a cgroup v1/v2 hybrid with controllers on the v2 side).
cap() { if [ "$1" = unlimited ] || [ "$1" -gt "$2" ]; then echo "$2"; else echo "$1"; fi; }
nofile=$(cap "$(ulimit -Hn)" 65536)
nproc=$(cap "$(ulimit -Hu)" 4096)
limits="default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
printf '[containers]\n%s\n' "$limits" >"$WORK/containers-limits.conf"
printf '[containers]\n%s\n[engine]\nruntime = "runc"\n' "$limits" >"$WORK/containers-runc.conf"
errors=""
runnable=0
for conf in "" "$WORK/containers-limits.conf" "$WORK/containers-runc.conf"; do
    export CONTAINERS_CONF=$conf
    [ -n "$conf" ] || unset CONTAINERS_CONF
    if out=$(pod run --rm --no-healthcheck --network none "$BASE" python3 -c 'print("ok")' 2>&1) \
            && [ "$out" = ok ]; then
        runnable=1
        break
    fi
    errors="$errors"$'\n'"  [${conf:-podman defaults}] $(tail -1 <<<"$out")"
done
if [ "$runnable" != 1 ]; then
    printf 'image-check: SKIPPED: podman cannot run containers on this machine:%s\n' "$errors" >&2
    exit "$EXIT_SKIPPED"
fi
say "podman runs containers with ${CONTAINERS_CONF:-its defaults}"
[ -z "$errors" ] || say "(what failed before:$errors)"

# ---- build ---------------------------------------------------------------------------------
# Behind a TLS-inspecting proxy pip needs the host's CA bundle: it goes in as a build secret.
build_args=(--format docker --build-arg "BASE_IMAGE=$BASE" -t "$IMAGE" -f "$ROOT/Dockerfile")
ca=${PIP_CERT:-${SSL_CERT_FILE:-}}
[ -n "$ca" ] && [ -s "$ca" ] && build_args+=(--secret "id=pip_cert,src=$ca")
[ -n "${PIP_INDEX_URL:-}" ] && build_args+=(--build-arg "PIP_INDEX_URL=$PIP_INDEX_URL")
say "building $IMAGE (log: $WORK/build.log)"
started=$SECONDS
timeout 600 $SUDO env ${CONTAINERS_CONF:+CONTAINERS_CONF="$CONTAINERS_CONF"} podman build "${build_args[@]}" "$ROOT" >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log" >&2; fail "podman build failed (log: $WORK/build.log)"; }
say "built in $((SECONDS - started)) s"

# ---- the image's metadata and contents --------------------------------------------------
meta=$(pod image inspect "$IMAGE" --format \
    '{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Env}}|{{json .Config.ExposedPorts}}')
IFS='|' read -r user entrypoint env ports <<<"$meta"
[ "$user" = "$UID_GID" ] || fail "image user is '$user', expected $UID_GID"
[ "$entrypoint" = '["sidecar","run"]' ] || fail "entrypoint is $entrypoint"
for want in SIDECAR_CONFIG=/etc/sidecar/sidecar.yaml PYTHONDONTWRITEBYTECODE=1; do
    [[ $env == *"\"$want\""* ]] || fail "image env lacks $want"
done
[[ $ports == *8080/tcp* && $ports == *9090/tcp* ]] || fail "image exposes $ports, expected 8080 and 9090"
# What the Dockerfile adds must hold no compiler, wheel, pip or pip cache (the base's own files,
# such as Debian's ensurepip wheels, are its business).
# shellcheck disable=SC2016
inside='for c in gcc cc g++ clang make; do p=$(command -v $c) && { echo "found $p"; exit 1; }; done
found=$(find / -xdev \( -path "*/.cache/pip" -o -path "/opt/*.whl" -o -path "/opt/venv/bin/pip*" \
    -o -path /wheels -o -path /src \) -print 2>/dev/null | head -5)
[ -z "$found" ] || { echo "found $found"; exit 1; }'
out=$(pod run --rm --no-healthcheck --network none --user 0 --entrypoint /bin/sh "$IMAGE" \
    -c "$inside" 2>&1) || fail "the final stage should hold no compiler, pip, wheel or pip cache: $out"
say "image: user $user, entrypoint $entrypoint, no compiler, pip, wheels or caches"

# ---- sandbox on this host -----------------------------------------------------------------
rm -rf "$WORK/sandbox"
ports=()
for name in proxy admin idp api kisc passport registration mpt; do ports+=("--$name-port" 0); done
"$VENV/bin/sidecar" sandbox --dir "$WORK/sandbox" "${ports[@]}" >"$WORK/sandbox.log" 2>&1 &
SANDBOX_PID=$!
for _ in $(seq 120); do
    grep -q 'sandbox is up' "$WORK/sandbox.log" && break
    kill -0 "$SANDBOX_PID" 2>/dev/null || { cat "$WORK/sandbox.log" >&2; fail "sidecar sandbox exited"; }
    sleep 0.5
done
grep -q 'sandbox is up' "$WORK/sandbox.log" || fail "sidecar sandbox did not start in 60 s"

# The sandbox's config, with every file it names copied to /run/secrets/sandbox/ (readable by
# uid 10001 only, mounted read-only) and the listeners on free loopback ports.
$SUDO rm -rf "$WORK/run" && mkdir -p "$WORK/run/etc" "$WORK/run/secrets"
read -r PROXY_PORT ADMIN_PORT < <("$VENV/bin/python" - "$WORK/sandbox/sidecar.yaml" \
    "$WORK/run/secrets" "$WORK/run/etc/sidecar.yaml" <<'PY'
import shutil
import socket
import sys
from pathlib import Path

import yaml

source, secrets, target = (Path(a) for a in sys.argv[1:4])
data = yaml.safe_load(source.read_text(encoding="utf-8"))
copied: dict[str, str] = {}


def relocate(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and key.endswith("_file") and isinstance(value, str):
                if value not in copied:
                    name = Path(value).name
                    if name in copied.values():
                        name = f"{len(copied)}-{name}"
                    shutil.copyfile(value, secrets / name)
                    copied[value] = name
                node[key] = f"/run/secrets/sandbox/{copied[value]}"
            else:
                relocate(value)
    elif isinstance(node, list):
        for item in node:
            relocate(item)


relocate(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


proxy, admin = free_port(), free_port()
data["listen"] = {"proxy": f"127.0.0.1:{proxy}", "admin": f"127.0.0.1:{admin}"}
data["log"] = {"level": "info", "format": "json"}
data["shutdown"] = {"delay": 1, "grace": 5}
target.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
print(proxy, admin)
PY
)
$SUDO chown -R "$UID_GID" "$WORK/run/secrets"
$SUDO chmod 0400 "$WORK/run/secrets/"* && $SUDO chmod 0500 "$WORK/run/secrets"
chmod 0444 "$WORK/run/etc/sidecar.yaml"

# ---- run it as the pod does --------------------------------------------------------------
# --network host: the sandbox listens on this host's loopback, and the sidecar's proxy
# listener stays on 127.0.0.1 as in a pod. Only /tmp is writable.
pod run -d --name "$CTR" --no-healthcheck --network host --user "$UID_GID" \
    --read-only --read-only-tmpfs=false --tmpfs /tmp:rw,size=16m,mode=1777 \
    --cap-drop ALL --security-opt no-new-privileges \
    -e "HEALTHCHECK_URL=http://127.0.0.1:$ADMIN_PORT/healthz" \
    -v "$WORK/run/etc:/etc/sidecar:ro" -v "$WORK/run/secrets:/run/secrets/sandbox:ro" \
    "$IMAGE" >"$WORK/run.log" 2>&1 || { cat "$WORK/run.log" >&2; fail "podman run failed"; }
logs() { pod logs "$CTR" 2>&1 | tail -20 >&2; }

admin=http://127.0.0.1:$ADMIN_PORT
wait_for() {  # wait_for PATH SECONDS
    for _ in $(seq $(($2 * 2))); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$admin$1")" = 200 ] && return 0
        [ "$(pod inspect -f '{{.State.Running}}' "$CTR" 2>/dev/null)" = true ] \
            || { logs; fail "the container stopped (logs above)"; }
        sleep 0.5
    done
    curl -s "$admin$1" >&2 || true
    logs
    fail "$1 did not answer 200 within $2 s"
}
wait_for /healthz 30
say "/healthz 200"
wait_for "/readyz?strict" 60
say "/readyz?strict 200: every upstream holds a token"

[ "$(pod exec "$CTR" id -u)" = 10001 ] || fail "the sidecar does not run as uid 10001"
pod exec "$CTR" sh -c 'touch /probe 2>/dev/null' && fail "the root file system is writable"
# The image's HEALTHCHECK command, run in the container (podman here has no systemd to time it).
mapfile -d '' health < <(pod image inspect "$IMAGE" --format '{{json .Config.Healthcheck.Test}}' \
    | "$VENV/bin/python" -c 'import json, sys; sys.stdout.write("\0".join(json.load(sys.stdin)[1:]))')
pod exec "$CTR" "${health[@]}" || fail "the image's HEALTHCHECK (${health[*]}) failed"
say "running as uid 10001, root file system read-only, HEALTHCHECK passes"

proxy=http://127.0.0.1:$PROXY_PORT
body=$(curl -sS --max-time 20 -x "$proxy" http://api.moex.com/ntb/hello) \
    || fail "proxied request to http://api.moex.com/ntb/hello failed"
# NTB asks no client certificate (MOEX publishes none for it): the KISC call below is the
# mTLS check.
[[ $body == *'"Bearer '* ]] \
    || fail "the NTB sandbox did not see a bearer token: $body"
say "proxied http://api.moex.com/ntb/hello: the API saw a Bearer token"
code=$(curl -sS --max-time 20 -o /dev/null -w '%{http_code}' -x "$proxy" \
    http://ax.kisc.kz/etsfo/1.0.0/messages/) || true
[ "$code" = 200 ] || fail "proxied KISC request answered $code, expected 200"
say "proxied http://ax.kisc.kz/etsfo/1.0.0/messages/: 200 (WSO2, mTLS with the PKCS#12)"
code=$(curl -s -o /dev/null -w '%{http_code}' -x "$proxy" http://unknown.example/) || true
[ "$code" = 403 ] || fail "an unknown host answered $code, expected 403"
metrics=$(curl -sS "$admin/metrics") || fail "/metrics did not answer"
grep -q '^sidecar_requests_total{' <<<"$metrics" || fail "/metrics lacks sidecar_requests_total"
say "unknown host refused (403); /metrics counts the requests"

# SIGTERM (what the kubelet sends): drain, then exit 0.
pod stop -t 30 "$CTR" >/dev/null
status=$(pod inspect -f '{{.State.ExitCode}}' "$CTR")
[ "$status" = 0 ] || { logs; fail "after SIGTERM the sidecar exited $status, expected 0"; }
say "SIGTERM: drained and exited 0"

# ---- again under an arbitrary UID, as OpenShift's restricted SCC runs it -------------------
# A UID with no passwd entry, in group 0; the secrets readable by any UID (0444), as the
# kustomize component mounts them. Nothing in the image may assume uid 10001.
pod rm -f -t 0 "$CTR" >/dev/null
$SUDO rm -rf "$WORK/run/secrets-any" && $SUDO cp -r "$WORK/run/secrets" "$WORK/run/secrets-any"
$SUDO chmod 0444 "$WORK/run/secrets-any/"* && $SUDO chmod 0555 "$WORK/run/secrets-any"
pod run -d --name "$CTR" --no-healthcheck --network host --user "$ANY_UID" \
    --read-only --read-only-tmpfs=false --tmpfs /tmp:rw,size=16m,mode=1777 \
    --cap-drop ALL --security-opt no-new-privileges \
    -v "$WORK/run/etc:/etc/sidecar:ro" -v "$WORK/run/secrets-any:/run/secrets/sandbox:ro" \
    "$IMAGE" >"$WORK/run.log" 2>&1 || { cat "$WORK/run.log" >&2; fail "podman run --user $ANY_UID failed"; }
wait_for "/readyz?strict" 60
[ "$(pod exec "$CTR" id -u)" = "${ANY_UID%%:*}" ] || fail "the sidecar does not run as uid ${ANY_UID%%:*}"
body=$(curl -sS --max-time 20 -x "$proxy" http://api.moex.com/ntb/hello) \
    || fail "under uid ${ANY_UID%%:*}: proxied request to http://api.moex.com/ntb/hello failed"
[[ $body == *'"Bearer '* ]] || fail "under uid ${ANY_UID%%:*}: the API saw no bearer token: $body"
pod stop -t 30 "$CTR" >/dev/null
status=$(pod inspect -f '{{.State.ExitCode}}' "$CTR")
[ "$status" = 0 ] || { logs; fail "under uid ${ANY_UID%%:*} the sidecar exited $status after SIGTERM"; }
say "under uid $ANY_UID (no passwd entry): /readyz 200, proxied with a token, exited 0"
say "PASSED"
