# The two commands a new user types are `make demo` and `make test`; each creates .venv when missing.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SHARED ?= $(abspath ../shared)
# The torch engine's tests need PyTorch, pinned: this machine's disk (/opt/wheels) holds the CPU
# wheel of exactly this version. `make install TORCH=` installs without it (its tests then skip).
TORCH  ?= torch==2.13.0
# Where tests find ../shared (datasets + reference numbers); tests that need it skip without it.
export MODNET_SHARED_DIR ?= $(if $(wildcard $(SHARED)/reference),$(SHARED),)

.PHONY: install demo test test-fast lint fmt typecheck bench bench-matte profile clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
# torch before '.[dev]', explicitly and pinned: a range (the [torch] extra's torch>=2.4) would
# let pip pull PyPI's CUDA build of several GB instead of the CPU wheel on this machine's disk.
# Measured here: +26 s and +870 MB on a fresh venv. Elsewhere add the CPU index, e.g.
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu, or pass TORCH= to go without.
	$(if $(TORCH),$(PY) -m pip install -q '$(TORCH)')
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m modnet_batch.demo --out demo $(if $(DEMO_SRC),--src $(DEMO_SRC),)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not ray and not cluster"

lint: $(STAMP)
	$(VENV)/bin/ruff check modnet_batch tests
	$(VENV)/bin/ruff format --check modnet_batch tests
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

fmt: $(STAMP)
	$(VENV)/bin/ruff format modnet_batch tests
	$(VENV)/bin/ruff check --fix modnet_batch tests

bench: $(STAMP)
	$(PY) -m modnet_batch.bench.standard --out bench

bench-matte: $(STAMP)
	$(PY) -m modnet_batch.bench.matting $(SHARED)/datasets/ppm100-dev/image --out bench/matting.json

profile: $(STAMP)
	$(PY) -m modnet_batch.bench.profile --out bench/profile

clean:
	rm -rf demo bench .pytest_cache .mypy_cache .ruff_cache
