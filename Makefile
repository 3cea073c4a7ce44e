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

.PHONY: install demo test test-fast lint fmt typecheck bench bench-matte bench-scale bench-ingest bench-storage bench-device device-kit profile report-check clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing modnet-batch and its dependencies into $(VENV) (log: $(VENV)/install.log)"
# torch before '.[cpu,dev]', explicitly and pinned: a range (the [torch] extra's torch>=2.4) would
# let pip pull PyPI's CUDA build of several GB instead of the CPU wheel on this machine's disk.
# Measured here: +26 s and +870 MB on a fresh venv. Elsewhere add the CPU index, e.g.
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu, or pass TORCH= to go without.
	@( $(PY) -m pip install --upgrade pip $(if $(TORCH),&& $(PY) -m pip install '$(TORCH)') \
		&& $(PY) -m pip install -e '.[cpu,dev]' ) > $(VENV)/install.log 2>&1 \
		|| { tail -n 40 $(VENV)/install.log; \
		echo "install failed; the whole log: $(VENV)/install.log"; exit 1; }
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

# 100,000 small images through submit with the tiny model: driver CPU per shard, memory at
# 10k/50k/100k, resume time, run-directory costs (modnet_batch/bench/scale.py); bench/scale.json.
# SCALE_IMAGES=2000 for a quick run.
SCALE_IMAGES ?= 100000
bench-scale: $(STAMP)
	$(PY) -m modnet_batch.bench.scale --images $(SCALE_IMAGES) --out bench

# submit on ppm100-dev from local disk vs from S3 (moto on 127.0.0.1), the real model, rounds
# alternating (modnet_batch/bench/storage.py); bench/storage.json.
bench-storage: $(STAMP)
	$(PY) -m modnet_batch.bench.storage $(SHARED)/datasets/ppm100-dev --out bench/storage.json

# ingest's decode checks as Ray tasks at 1 and 2 workers (and local threads), ~2 MP synthetic
# portraits, medians of 3 rounds (modnet_batch/bench/ingest.py); bench/ingest.json.
bench-ingest: $(STAMP)
	$(PY) -m modnet_batch.bench.ingest --out bench/ingest.json

bench-matte: $(STAMP)
	$(PY) -m benchmarks.matting $(SHARED)/datasets/ppm100-dev/image

# The device benchmark (modnet_batch/bench/device.py): on a GPU machine it measures CUDA, here the
# CPU. `make device-kit` packs what the GPU machine lacks into .device/ (model, real images,
# wheels); there: python3 -m pip install -q --no-index --no-deps --target /tmp/site .device/whl/*
# && PYTHONPATH=/tmp/site:$$PWD python3 -m modnet_batch.bench.device --model .device/modnet.onnx
# --src .device/src --out OUT
DEVICE_IMAGES ?= 12
bench-device: $(STAMP)
	$(PY) -m modnet_batch.bench.device --model "$$($(PY) -m modnet_batch model fetch | tail -n 1)" \
		--src $(SHARED)/datasets/ppm100-dev --out bench/device

device-kit: $(STAMP)
	rm -rf .device && mkdir -p .device/whl .device/src/image .device/src/matte
	cp "$$($(PY) -m modnet_batch model fetch | tail -n 1)" .device/modnet.onnx
	for f in $$(ls $(SHARED)/datasets/ppm100-dev/image | head -n $(DEVICE_IMAGES)); do \
		cp $(SHARED)/datasets/ppm100-dev/image/$$f .device/src/image/; \
		cp $(SHARED)/datasets/ppm100-dev/matte/$${f%.*}.* .device/src/matte/; done
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--platform any -d .device/whl platformdirs
	du -sh .device

profile: $(STAMP)
	$(PY) -m modnet_batch.bench.profile --out bench/profile

clean:
	rm -rf demo bench report-check .pytest_cache .mypy_cache .ruff_cache
