# Two commands do everything on a fresh machine (see README.md):
#   make demo   -- the main job on its embedded default (CPU, no downloads)
#   make test   -- ruff + the test suite
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU installs pin torch to the local 2.13.0 wheel; any other torch pulls GBs of CUDA wheels.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test,webshop,logging
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed-*
	touch $@

install: $(STAMP)

demo: install
	$(BIN)/hiper bench advantage

test: install
	$(BIN)/ruff check hiper tests benchmarks
	$(BIN)/python -m pytest -q -p no:cacheprovider

bench: install
	$(BIN)/hiper bench advantage

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
