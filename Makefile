# `make demo` and `make test` do all the set-up on a fresh machine: they create .venv when it is
# missing and install the project with what the target needs.
VENV   := .venv
ifeq ($(OS),Windows_NT)  # the release workflow's Windows runner: a venv keeps its interpreter in Scripts\ there
PYTHON ?= python
PY     := $(VENV)/Scripts/python.exe
else
PYTHON ?= python3
PY     := $(VENV)/bin/python
endif

.PHONY: test lint demo bench bench-rtt dist clean k8s oracle components

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip

# The demo needs only the plugin and the sandbox; the tests add pytest, ruff, hypothesis, PyInstaller.
$(VENV)/.installed-demo: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[sandbox]'
	touch $@

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@ $(VENV)/.installed-demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

# The tests hold the plugin to the real Kubernetes control plane (kube-apiserver, etcd, scheduler, controller-manager,
# agnhost) and to the kubelet's own prober (probe-oracle) and grpc_health_probe, all built from Go modules when Go is
# installed (CI always, and there a missing component fails the run); without Go those tests are skipped, saying why.
test: lint components
	$(PY) -m pytest

demo: $(VENV)/.installed-demo
	bash scripts/demo.sh

dist: $(VENV)/.installed
	$(PY) scripts/dist.py

bench: $(VENV)/.installed
	$(PY) bench/bench_probe.py

# The plugin, the kubectl runbook and a fleet at RTT 0/20/50/100 ms through a latency relay (needs grpc_health_probe).
bench-rtt: $(VENV)/.installed oracle
	$(PY) bench/bench_rtt.py

# The real Kubernetes components, agnhost, the kubelet's prober (probe-oracle) and grpc_health_probe, built from
# Go modules into ${XDG_CACHE_HOME:-~/.cache}/kubectl-grpcprobe/k8s/<version>/bin; a second run is a no-op.
k8s:
	bash hack/k8s/build.sh

components:
	@if command -v go >/dev/null; then bash hack/k8s/build.sh; else echo "make test: no Go toolchain, the real control plane and differential tests will be skipped"; fi

oracle:
	@if command -v go >/dev/null; then bash hack/k8s/build.sh oracle; else echo "make oracle: no Go toolchain, the differential tests will be skipped"; fi

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
