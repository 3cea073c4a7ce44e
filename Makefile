# The two commands a new user types are `make demo` and `make test`; each creates .venv when missing.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SHARED ?= $(abspath ../shared)
# Where tests find ../shared (datasets + reference numbers); tests that need it skip without it.
export MODNET_SHARED_DIR ?= $(if $(wildcard $(SHARED)/reference),$(SHARED),)

.PHONY: install demo test test-fast lint fmt typecheck bench bench-matte profile report-check clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
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

# Report pages (a run, a comparison, one without ground truth) opened in headless Chromium; the
# pages and their full-page screenshots land in report-check/ (needs /usr/bin/chromium).
report-check: $(STAMP)
	MODNET_REPORT_CHECK_DIR=$(abspath report-check) $(PY) -m pytest -q -rs -m browser tests/test_report_browser.py

bench: $(STAMP)
	$(PY) -m modnet_batch.bench.standard --out bench

bench-matte: $(STAMP)
	$(PY) -m modnet_batch.bench.matting $(SHARED)/datasets/ppm100-dev/image --out bench/matting.json

profile: $(STAMP)
	$(PY) -m modnet_batch.bench.profile --out bench/profile

clean:
	rm -rf demo bench report-check .pytest_cache .mypy_cache .ruff_cache
