# vpnlab: `make lab` brings up the default lab, `make test` runs the whole suite.
# Both install what is missing first (Debian/Ubuntu, as root).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
VPNLAB := $(VENV)/bin/vpnlab
TOPOLOGY ?= topologies/active-active-bgp.yaml
TIMERS ?= azure
APT_PACKAGES := strongswan-charon strongswan-swanctl libcharon-extra-plugins \
  libstrongswan-extra-plugins libstrongswan-standard-plugins frr iproute2 nftables \
  iperf3 tcpdump iputils-ping util-linux
PYTEST_ARGS ?=

.PHONY: deps system-deps lab down status test test-unit scenarios bench clean

deps: system-deps $(VENV)/.installed

system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml
	@python3 -m venv $(VENV) 2>/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && python3 -m venv $(VENV); }
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

lab: deps
	$(VPNLAB) up $(TOPOLOGY) --timers $(TIMERS)

status: deps
	$(VPNLAB) status

down: deps
	$(VPNLAB) down --all

test: deps
	mkdir -p reports
	$(PY) -m pytest -v --junitxml=reports/junit.xml $(PYTEST_ARGS)

scenarios: deps
	mkdir -p reports
	$(PY) -m pytest -v -s scenarios $(PYTEST_ARGS)

test-unit: deps
	$(PY) -m pytest -v -m "not integration" $(PYTEST_ARGS)

bench: deps
	$(PY) -m lab.bench --out bench-results/bench.json

clean:
	rm -rf $(VENV) reports bench-results *.egg-info
