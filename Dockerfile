# authsidecar container image.
#
#   docker build -t authsidecar:0.1.0 .
#   docker build --build-arg BASE_IMAGE=registry.example.com/python:3.11-slim -t authsidecar .
#
# BASE_IMAGE must have python3 (3.11 or newer) with its venv module (and CA certificates, for
# upstreams that use the system trust store). Every stage uses it, so the wheels are built for
# the interpreter that runs them. Every dependency has a wheel; only the project's own hot
# path is compiled (Cython, see the README's "Compiled hot path"), by gcc, which the build
# stage installs with apt-get (a Debian or Ubuntu base; with python3-dev when the base lacks
# Python's headers). The runtime stage holds no compiler.
#   docker build --build-arg SIDECAR_NO_COMPILE=1 .   # the pure-Python image: no apt-get
# The pip_cert secret mount below needs BuildKit (Docker's default builder) or podman.
ARG BASE_IMAGE=python:3.11-slim

# ---- build: the project and all its dependencies as wheels ---------------------------------
FROM ${BASE_IMAGE} AS build
# A PyPI mirror, if PyPI itself is out of reach.
ARG PIP_INDEX_URL=https://pypi.org/simple
# 1: no compiler, the pure-Python package (it behaves the same and costs more CPU per request).
ARG SIDECAR_NO_COMPILE=0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# The C compiler for the hot path, in this stage only. Versions are the base release's.
# hadolint ignore=DL3008
RUN if [ "$SIDECAR_NO_COMPILE" != 1 ]; then \
        set -- gcc libc6-dev \
        && include=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])') \
        && { [ -e "$include/Python.h" ] || set -- "$@" python3-dev; } \
        && apt-get update \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" \
        && rm -rf /var/lib/apt/lists/*; \
    fi
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY sidecar ./sidecar
# Behind a TLS-inspecting proxy, give pip the proxy's CA bundle as a build secret (it never
# reaches a layer): --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && python3 -m venv /opt/build \
    && /opt/build/bin/pip wheel --no-cache-dir --wheel-dir /wheels ".[fast,redis]"

# ---- install: a virtual environment filled from those wheels only ------------------------
# Same base as the runtime, so the venv's interpreter links stay valid when it is copied.
FROM ${BASE_IMAGE} AS install
ARG SIDECAR_NO_COMPILE=0
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
# The .pyc files are compiled here: at run time the root file system is read-only. pip and
# setuptools leave the venv once it is filled. The image ships the compiled hot path unless
# it was asked not to: a build that fell back to pure Python stops here.
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links=/wheels /wheels/*.whl \
    && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools \
    && chmod -R go+rX,go-w /opt/venv \
    && hot_path=$(/opt/venv/bin/sidecar --version) && echo "$hot_path" \
    && case "$SIDECAR_NO_COMPILE:$hot_path" in \
         1:*|*"hot path: compiled ("*) ;; \
         *) echo "the hot path did not compile (see the build stage)" >&2; exit 1 ;; \
       esac

# ---- runtime: the venv and a non-root user; no wheels, pip, caches or compilers -----------
# Any UID works (OpenShift's restricted SCC runs the image under an arbitrary UID in group 0):
# nothing is owned by or only readable for uid 10001, the venv (root:root) is readable by all,
# HOME is /tmp rather than a passwd entry's, and /tmp (1777; a tmpfs in the manifests) is the
# only path written.
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="authsidecar" \
      org.opencontainers.image.description="Outbound authentication sidecar for MOEX, KISC and MPT APIs"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TMPDIR=/tmp \
    HOME=/tmp \
    SIDECAR_CONFIG=/etc/sidecar/sidecar.yaml
COPY --from=install /opt/venv /opt/venv
# The default user (Kubernetes without runAsUser, docker run); its home is /tmp too.
RUN groupadd --gid 10001 sidecar \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
       --shell /usr/sbin/nologin sidecar \
    && mkdir -p /etc/sidecar \
    && sidecar --version
USER 10001:10001
# 8080: the proxy (config listen.proxy, 127.0.0.1 in a pod); 9090: the admin listener.
EXPOSE 8080 9090
# For `docker run` (Kubernetes uses the probes in the manifests instead). HEALTHCHECK_URL
# follows a changed listen.admin; it must not start with SIDECAR_ (those are config overrides).
ENV HEALTHCHECK_URL=http://127.0.0.1:9090/healthz
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=2)"]
ENTRYPOINT ["sidecar", "run"]
