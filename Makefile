# Everything a fresh clone needs: `make demo` and `make test` create the
# virtual environment and install fatia into it before they run.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint proto bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fatia demo

test: $(STAMP)
	$(BIN)/ruff check deviceplugin mig tests bench
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check deviceplugin mig tests bench
	$(BIN)/mypy

proto: $(STAMP)
	$(BIN)/python -m deviceplugin.api.codegen

bench: $(STAMP)
	$(BIN)/python bench/allocate.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/reconfigure.py
	$(BIN)/python bench/health.py
	$(BIN)/python bench/propagation.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

# The real-NVML test tier (tests/realnvml): fatia's mock libnvidia-ml.so.1, built
# into ~/.cache/fatia/nvml-mock/<version>/ (seconds cold, milliseconds warm).
.PHONY: nvml-mock
nvml-mock:
	@tests/realnvml/mocknvml/build.sh
test: nvml-mock

# --- real-cluster tier (tests/e2e) ---------------------------------------------------
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubelet built from
# the Go module proxy at the versions pinned in tests/e2e/cluster/go.{mod,sum}, plus
# our fake CRI, into a cache outside the checkout. No GPU, no Docker, loopback only.
E2E_MOD     := tests/e2e/cluster
E2E_VERSION := $(shell awk '$$1 == "k8s.io/kubernetes" { print $$2; exit }' $(E2E_MOD)/go.mod)
E2E_CACHE   ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/fatia-e2e
E2E_BIN     := $(E2E_CACHE)/$(E2E_VERSION)/bin
E2E_STAMP   := $(E2E_BIN)/.built

.PHONY: e2e e2e-build

$(E2E_STAMP): $(E2E_MOD)/go.mod $(E2E_MOD)/go.sum $(E2E_MOD)/build.sh $(wildcard $(E2E_MOD)/cmd/*/*.go)
	$(E2E_MOD)/build.sh $(E2E_BIN)
	touch $@

e2e-build: $(E2E_STAMP)
	@echo "e2e-build: binaries in $(E2E_BIN)"

e2e: $(STAMP) $(E2E_STAMP)
	@start=$$(date +%s); \
	FATIA_E2E_BIN=$(E2E_BIN) $(BIN)/python -m pytest -m e2e tests/e2e -o timeout=900 --durations=0; \
	rc=$$?; echo "e2e: tests ran in $$(( $$(date +%s) - start )) s"; exit $$rc
