# Everything a fresh clone needs: `make demo` and `make test` create the
# virtual environment and install fatia into it before they run.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-slow lint proto bench clean

# Dev tools at the exact versions of dev-constraints.txt; UNPINNED=1 takes the newest
# allowed by pyproject.toml (to refresh the pins).
CONSTRAINTS := $(if $(UNPINNED),,-c dev-constraints.txt)

# setup.py builds the C offer reader in place (deviceplugin/kubelet/_offer*.so); an edit
# of it installs again.
$(STAMP): pyproject.toml setup.py dev-constraints.txt deviceplugin/kubelet/_offer.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fatia demo

# Lint, type-check and the fast and real-NVML tiers; prints its own wall time. Most tests
# wait on sockets and child processes, so more workers than the 2 cores still pay (6 beat
# 3, 4 and 8 on the 2-core machines); work stealing keeps a long test from ending the run
# alone on one worker.
TEST_WORKERS ?= 6
# The tiers whose conftest prints a summary (the fuzz figures; the real pynvml and library
# the real-NVML tier loaded) are named, so that pytest-xdist's controller loads them too.
TEST_PATHS := tests tests/fuzz tests/realnvml

# Bytecode caches on: a test run starts some 150 Python processes (fatia run, the xdist
# workers), and an environment with PYTHONDONTWRITEBYTECODE=1 makes each compile fatia, and
# each worker rewrite every test module's asserts, again (__pycache__ is git-ignored).
# Lint runs beside the tests (a cold mypy cache, as in a fresh clone, is ~17 s of one core
# that the tests' waits leave idle); its output is printed once the tests are done, and
# either failing fails the target.
test: $(STAMP) nvml-mock
	@unset PYTHONDONTWRITEBYTECODE; start=$$(date +%s); lintlog=$$(mktemp); \
	$(MAKE) --no-print-directory lint > $$lintlog 2>&1 & lint=$$!; \
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal $(TEST_PATHS); tests=$$?; \
	wait $$lint; linted=$$?; echo "--- make lint (rc $$linted):"; cat $$lintlog; rm -f $$lintlog; \
	echo "make test: $$(( $$(date +%s) - start )) s wall"; \
	[ $$tests -eq 0 ] && [ $$linted -eq 0 ]

# The long variants (pytest -m slow), e.g. a 30 s API-server outage; CI runs them.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff format --check deviceplugin mig tests bench setup.py
	$(BIN)/ruff check deviceplugin mig tests bench setup.py
	$(BIN)/mypy

proto: $(STAMP)
	$(BIN)/python -m deviceplugin.api.codegen

bench: $(STAMP)
	$(BIN)/python bench/allocate.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/reconfigure.py
	$(BIN)/python bench/health.py
	$(BIN)/python bench/propagation.py
	$(MAKE) --no-print-directory nvml-mock
	$(BIN)/python bench/idle.py
	$(BIN)/python bench/dynamic_mig.py
	$(BIN)/python bench/hostile_configs.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info build deviceplugin/kubelet/_offer*.so

# The real-NVML test tier (tests/realnvml): fatia's mock libnvidia-ml.so.1, built
# into ~/.cache/fatia/nvml-mock/<version>/ (seconds cold, milliseconds warm).
.PHONY: nvml-mock
nvml-mock:
	@tests/realnvml/mocknvml/build.sh

# --- real-cluster tier (tests/e2e) ---------------------------------------------------
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubelet built from
# the Go module proxy at the versions pinned in tests/e2e/cluster/go.{mod,sum}, plus
# our fake CRI, into a cache outside the checkout. No GPU, no Docker, loopback only.
E2E_MOD     := tests/e2e/cluster
# The version a go.mod requires of module $(1): $(call e2e_require,MODULE,GO.MOD)
e2e_require  = $(shell awk '{ for (i = 1; i < NF; i++) if ($$i == "$(1)") { print $$(i + 1); exit } }' $(2))
E2E_VERSION := $(call e2e_require,k8s.io/kubernetes,$(E2E_MOD)/go.mod)
E2E_CACHE   ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/fatia-e2e
E2E_BIN     := $(E2E_CACHE)/$(E2E_VERSION)/bin
E2E_STAMP   := $(E2E_BIN)/.built
# A kubelet from before Kubernetes PR #135437 for the surge-update test.
E2E_OLD_MOD := tests/e2e/kubelet-1.36
E2E_OLD_BIN := $(E2E_CACHE)/$(call e2e_require,k8s.io/kubernetes,$(E2E_OLD_MOD)/go.mod)/bin
# helm, for the chart in daemonset/chart.
E2E_HELM_MOD := tests/e2e/helm
E2E_HELM_BIN := $(E2E_CACHE)/helm-$(call e2e_require,helm.sh/helm/v3,$(E2E_HELM_MOD)/go.mod)/bin

.PHONY: e2e e2e-build

$(E2E_STAMP): $(E2E_MOD)/go.mod $(E2E_MOD)/go.sum $(E2E_MOD)/build.sh $(wildcard $(E2E_MOD)/cmd/*/*.go) \
		$(E2E_OLD_MOD)/go.mod $(E2E_OLD_MOD)/go.sum $(E2E_HELM_MOD)/go.mod $(E2E_HELM_MOD)/go.sum
	$(E2E_MOD)/build.sh $(E2E_BIN) $(E2E_OLD_BIN) $(E2E_HELM_BIN)
	touch $@

e2e-build: $(E2E_STAMP)
	@echo "e2e-build: binaries in $(E2E_BIN)"

e2e: $(STAMP) $(E2E_STAMP)
	@start=$$(date +%s); \
	FATIA_E2E_BIN=$(E2E_BIN) FATIA_E2E_OLD_KUBELET=$(E2E_OLD_BIN)/kubelet \
	FATIA_E2E_HELM=$(E2E_HELM_BIN)/helm $(BIN)/python -m pytest -m e2e tests/e2e -o timeout=900 --durations=0; \
	rc=$$?; echo "e2e: tests ran in $$(( $$(date +%s) - start )) s"; exit $$rc
