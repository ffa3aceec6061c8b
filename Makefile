# The two commands: `make run` (the gateway on embedded defaults) and `make test`.
# Both build their own virtual environment, so they work on a fresh Debian machine as root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages: libssl3 (our OpenSSL binding), libcoap3-bin (interop peer), dnsmasq-base
# (discovery lab), autoconf/automake (to build DTLSSocket, aiocoap's DTLS for interop tests).
DEB_PACKAGES := libssl3 libcoap3-bin dnsmasq-base autoconf automake bird2

.PHONY: run test deps venv lint bench clean

$(STAMP): pyproject.toml | deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

deps:
ifneq ($(strip $(DEB_PACKAGES)),)
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi
endif

run: $(STAMP)
	$(BIN)/dots-gateway run --state-dir state

test: $(STAMP)
	$(BIN)/python -m pytest --cov=gateway/dots --cov=certs --cov=gateway.config \
		--cov-report=term-missing:skip-covered --cov-fail-under=90

# Numbers, not pass/fail: results go to tests/bench/RESULTS.md with the machine and date.
bench: $(STAMP)
	$(BIN)/python tests/bench/bench_transport.py
	$(BIN)/python tests/bench/bench_handshake_flood.py
	$(BIN)/python tests/bench/bench_dots.py
	$(BIN)/python tests/bench/bench_limits.py
	$(BIN)/python tests/bench/bench_anycast.py
	$(BIN)/python tests/bench/bench_coap.py
	$(BIN)/python tests/bench/bench_gateway.py

lint: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .coverage .hypothesis
