# The two commands: `make run` (the gateway on embedded defaults) and `make test`; and
# `make demo` (root: the whole story in network namespaces, narrated, with a picture).
# All build their own virtual environment, so they work on a fresh Debian machine as root.
# `make run` installs only what the daemon needs, quietly; `make test` adds the test extras
# and the Debian packages of the interop and lab tests. Each install has its own stamp.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
DEMO_STAMP := $(VENV)/.installed-demo
# A newer OpenSSL 3.x than Debian 12's 3.0, for DOTS_GATEWAY_OPENSSL: the tests run the
# transports on it too, and the benchmarks compare the two (deploy/openssl/fetch_openssl.py).
OPENSSL_DIR := $(VENV)/openssl
OPENSSL_STAMP := $(OPENSSL_DIR)/SOURCE
PIP_INSTALL := $(BIN)/pip install --quiet --disable-pip-version-check --root-user-action=ignore
# Debian packages. The daemon: libssl3 (our OpenSSL binding). The tests: libcoap3-bin
# (interop peer), dnsmasq-base (discovery lab), nsd (authoritative server for the discovery
# lab's signed zones), bird2 (anycast lab), autoconf/automake (to build DTLSSocket, aiocoap's
# DTLS for the interop tests).
RUN_DEBS := libssl3
TEST_DEBS := libcoap3-bin dnsmasq-base nsd autoconf automake bird2 curl
# The demo: bird2 (router and edges), dnsmasq-base (DHCP with the DOTS options), iproute2.
DEMO_DEBS := bird2 dnsmasq-base iproute2

.PHONY: run test demo run-deps test-deps demo-deps venv lint bench soak openssl clean

# Installs the Debian packages named in $(1) that are missing: one line, and apt's own
# output only when it fails.
define install_debs
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; log=$$(mktemp); \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; } \
			>$$log 2>&1 || { cat $$log; rm -f $$log; exit 1; }; rm -f $$log; \
	fi
endef

run-deps:
	$(call install_debs,$(RUN_DEBS))

test-deps:
	$(call install_debs,$(TEST_DEBS))

demo-deps:
	$(call install_debs,$(DEMO_DEBS))

$(RUN_STAMP): pyproject.toml | run-deps
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(PIP_INSTALL) --quiet -e .  # -qq: errors only
	@touch $@

$(TEST_STAMP): $(RUN_STAMP) | test-deps
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) -e '.[test]'
	touch $@

# matplotlib (the `demo` extra) draws the picture.
$(DEMO_STAMP): $(RUN_STAMP) | demo-deps
	@$(PIP_INSTALL) -e '.[demo]'
	@touch $@

$(OPENSSL_STAMP): deploy/openssl/fetch_openssl.py | $(RUN_STAMP)
	$(BIN)/python deploy/openssl/fetch_openssl.py $(OPENSSL_DIR)

openssl: $(OPENSSL_STAMP)

venv: $(TEST_STAMP)

# The daemon's state (dev PKI, database, control socket) goes to ./state, the default of
# every command.
run: $(RUN_STAMP)
	@exec $(BIN)/dots-gateway run

test: $(TEST_STAMP) $(OPENSSL_STAMP)
	$(BIN)/python -m pytest --durations=15 --cov=gateway/dots --cov=certs --cov=gateway.config \
		--cov-report=term-missing:skip-covered --cov-fail-under=90

# Root: namespaces, BIRD, dnsmasq and four daemons for 25-40 s, then all removed; the
# timeline, the picture and the logs go to ./demo-output.
demo: $(DEMO_STAMP)
	@exec $(BIN)/dots-gateway demo --output demo-output

# Numbers, not pass/fail: results go to tests/bench/RESULTS.md with the machine and date.
# RECONCILE_ARGS: e.g. --records 1000000 for the issue's size (~10 minutes more per code).
# BENCH_BASELINE: the commit whose daemon the transport bench also runs (issue 21 compares
# with it in the same run, as bench_dots, bench_gateway_scale and the reconcile bench do).
BENCH_BASELINE ?= 1a6ad65
bench: $(TEST_STAMP) $(OPENSSL_STAMP)
	$(BIN)/python tests/bench/bench_transport.py --baseline-ref $(BENCH_BASELINE)
	$(BIN)/python tests/bench/bench_handshake_flood.py
	$(BIN)/python tests/bench/bench_dots.py
	$(BIN)/python tests/bench/bench_limits.py
	$(BIN)/python tests/bench/bench_anycast.py
	$(BIN)/python tests/bench/bench_coap.py
	$(BIN)/python tests/bench/bench_gateway.py
	$(BIN)/python tests/bench/bench_gateway_scale.py
	$(BIN)/python tests/bench/bench_relay_reconcile.py $(RECONCILE_ARGS)
	$(BIN)/python tests/bench/bench_storm.py --openssl $(OPENSSL_DIR) --profile 10
	$(BIN)/python tests/bench/bench_qblock.py

# The long haul (issue 21): 50,000 DTLS sessions with heartbeats for 10 minutes on a server,
# then 25,000 through a gateway; ~30 minutes. SOAK_ARGS overrides (e.g. --sessions 5000).
soak: $(TEST_STAMP) $(OPENSSL_STAMP)
	$(BIN)/python tests/bench/soak.py $(SOAK_ARGS)

lint: $(TEST_STAMP)
	$(PIP_INSTALL) -e '.[dev]'
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .coverage .hypothesis
