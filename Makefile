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
