# vpnlab: `make lab` brings up the default lab, `make test` runs the whole suite.
# Both install what is missing first (Debian/Ubuntu, as root).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
VPNLAB := $(VENV)/bin/vpnlab
TOPOLOGY ?= topologies/active-active-bgp.yaml
TIMERS ?= azure
RUNTIME ?= netns
# The daemons run on the host only with the netns runtime (make test needs them: it runs
# both); containers bring their own from the node image.
DAEMON_PACKAGES := strongswan-charon strongswan-swanctl libcharon-extra-plugins \
  libstrongswan-extra-plugins libstrongswan-standard-plugins frr frr-pythontools nftables \
  iperf3 tcpdump iputils-ping openvpn libcharon-extauth-plugins freeradius freeradius-utils
# make test also looks at the report and a graph the way a person does (headless Chromium),
# and scrapes the gateway's OpenMetrics endpoint with a real Prometheus
TEST_PACKAGES := chromium fonts-dejavu-core prometheus
APT_PACKAGES = iproute2 util-linux $(if $(filter netns,$(RUNTIME)),$(DAEMON_PACKAGES)) \
  $(if $(filter test,$(MAKECMDGOALS)),$(TEST_PACKAGES))
DOCKER_PACKAGES := docker.io debootstrap
PYTEST_ARGS ?=

.PHONY: deps system-deps docker-engine image kernel-vm lab down status test test-unit scenarios bench clean

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
	$(VENV)/bin/pip install -q -e '.[all,test]'
	touch $@

# The Docker engine, where none answers: installed from Debian and started without
# systemd. No iptables rules and no docker0 bridge: lab bridges stay out of the root
# namespace and its FORWARD policy is left alone.
docker-engine:
	@if ! docker info >/dev/null 2>&1; then \
	  command -v dockerd >/dev/null && command -v debootstrap >/dev/null || { \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DOCKER_PACKAGES); }; \
	  echo "starting dockerd (log: /var/log/vpnlab-dockerd.log)"; \
	  setsid nohup dockerd --iptables=false --ip6tables=false --bridge=none >/var/log/vpnlab-dockerd.log 2>&1 < /dev/null & \
	  for i in $$(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done; \
	  docker info >/dev/null 2>&1 || { tail -20 /var/log/vpnlab-dockerd.log; exit 1; }; \
	fi
	@command -v debootstrap >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; }

# The node image for --runtime docker (and containerlab): its base is made locally with
# debootstrap when no registry can be reached.
image: deps docker-engine
	$(VPNLAB) image build

# A real Debian kernel (ESP, XFRM interfaces, netem), booted under QEMU without KVM by
# virtme-ng and sharing this machine's root filesystem read-only (docs/kernel-vm.md). The
# kernel package is unpacked into $(KERNEL_VM), never installed as the host's kernel; its
# modules are linked into /lib/modules/<version>, where the guest looks for them.
KERNEL_VM := .kernel-vm
KERNEL_VM_PACKAGES := qemu-system-x86 busybox-static kmod
kernel-vm: deps
	@missing=$$(for p in $(KERNEL_VM_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@pkg=$$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ {print $$2; exit}'); \
	[ -n "$$pkg" ] || { apt-get update -qq; pkg=$$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ {print $$2; exit}'); }; \
	ver=$${pkg#linux-image-}; \
	if [ ! -e $(KERNEL_VM)/boot/vmlinuz-$$ver ]; then \
	  echo "unpacking $$pkg into $(KERNEL_VM)"; \
	  rm -rf $(KERNEL_VM) && mkdir -p $(KERNEL_VM)/deb && (cd $(KERNEL_VM)/deb && apt-get download -qq $$pkg 2>/dev/null) && \
	  dpkg-deb -x $(KERNEL_VM)/deb/$$pkg*.deb $(KERNEL_VM) && rm -rf $(KERNEL_VM)/deb; \
	fi; \
	mkdir -p /lib/modules && ln -sfn $(CURDIR)/$(KERNEL_VM)/lib/modules/$$ver /lib/modules/$$ver; \
	ln -sfn boot/vmlinuz-$$ver $(KERNEL_VM)/vmlinuz

lab: deps $(if $(filter docker containerlab,$(RUNTIME)),image)
	$(VPNLAB) up $(TOPOLOGY) --timers $(TIMERS) --runtime $(RUNTIME)

status: deps
	$(VPNLAB) status

down: deps
	$(VPNLAB) down --all

# Every runtime that CI can run is required: a missing engine or image fails, not skips.
test scenarios bench: override RUNTIME = netns
test: deps image kernel-vm
	mkdir -p reports
	VPNLAB_REQUIRE_RUNTIMES=docker VPNLAB_REQUIRE_CHROMIUM=1 VPNLAB_REQUIRE_PROMETHEUS=1 VPNLAB_REQUIRE_KERNEL_VM=1 $(PY) -m pytest -v --junitxml=reports/junit.xml $(PYTEST_ARGS)

scenarios: deps
	mkdir -p reports
	$(PY) -m pytest -v -s scenarios $(PYTEST_ARGS)

test-unit: deps
	$(PY) -m pytest -v -m "not integration" $(PYTEST_ARGS)

bench: deps image
	$(PY) -m vpnlab.bench --out bench-results/bench.json

clean:
	rm -rf $(VENV) reports bench-results *.egg-info
	@for m in /lib/modules/*; do [ "$$(readlink $$m)" = "$(CURDIR)/$(KERNEL_VM)/lib/modules/$${m##*/}" ] && rm $$m; done; \
	rm -rf $(KERNEL_VM)
