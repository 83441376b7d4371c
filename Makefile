# vla-forget: `make bench` and `make test` set everything up from nothing
# (system packages, virtualenv, torch pinned by constraints.txt, the project)
# and then run the default battery or the test suite. Done steps are skipped.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Optional: a torch index (e.g. the CPU-only wheel index) for machines where
# the default registry would bring a CUDA build.
TORCH_INDEX_URL ?=
EXTRAS ?= test,plots,rlds,lowpoly,ray
OUT ?= runs/default
PYTEST_ARGS ?=

export VLA_FORGET_CACHE ?= $(CURDIR)/.cache/vla-forget
export MS_ASSET_DIR ?= $(CURDIR)/.cache/maniskill
export MS_SKIP_ASSET_DOWNLOAD_PROMPT := 1
export PYTHONUNBUFFERED := 1

SYSTEM_STAMP := $(VENV)/.system-ok
INSTALL_STAMP := $(VENV)/.install-ok

.PHONY: setup system bench smoke test test-all test-gpu perf perf-gpu clean distclean

setup: $(INSTALL_STAMP)

system: $(SYSTEM_STAMP)

$(SYSTEM_STAMP): scripts/setup-system.sh
	bash scripts/setup-system.sh $@

$(PY): | $(SYSTEM_STAMP)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel

$(INSTALL_STAMP): pyproject.toml constraints.txt $(SYSTEM_STAMP) | $(PY)
	$(PIP) install -q -c constraints.txt $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) torch
	$(PIP) install -q -c constraints.txt -e ".[$(EXTRAS)]"
	$(VENV)/bin/vla-forget doctor
	touch $@

bench: setup
	$(VENV)/bin/vla-forget bench --preset default --out $(OUT) --resume

smoke: setup
	$(VENV)/bin/vla-forget bench --preset smoke --out runs/smoke --resume

test: setup
	$(PY) -m pytest -m "not gpu" $(PYTEST_ARGS)

test-gpu: setup
	$(PY) -m pytest -m gpu $(PYTEST_ARGS)

perf: setup
	$(PY) benchmarks/perf/run_all.py --out runs/perf.json

perf-gpu: setup
	$(PY) benchmarks/perf/run_all.py --device cuda --out runs/perf-gpu.json

clean:
	rm -rf runs .pytest_cache

distclean: clean
	rm -rf $(VENV) .cache

# Reference tests against OpenVLA's and SimplerEnv's own code (docs/openvla.md#reference-tests-against-openvlas-and-simplerenvs-own-code):
# each skips, saying why, unless given the code: VLA_FORGET_OPENVLA_CODE=DIR (a checkout of openvla/openvla,
# run in OPENVLA_PY, an interpreter with the openvla extra) and VLA_FORGET_SIMPLER_PYTHON (SimplerEnv's interpreter).
OPENVLA_PY ?= .venv-openvla/bin/python
.PHONY: test-reference
test-reference: $(INSTALL_STAMP)
	$(PY) -m pytest -q -rs tests/test_simpler_reference.py
	if [ -x "$(OPENVLA_PY)" ]; then $(OPENVLA_PY) -m pytest -q -rs tests/test_openvla_reference.py; \
	else echo "test-reference: no $(OPENVLA_PY) (the openvla extra in its own virtualenv): OpenVLA's reference test not run"; fi
