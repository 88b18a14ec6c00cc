# Two commands on a fresh machine: `make demo` and `make test`. Each sets up .venv itself.
#
# torch is installed first and on its own: the CUDA build only where a CUDA GPU answers
# (nvidia-smi), otherwise the CPU build 2.13.0, so no install ever pulls CUDA wheels onto a
# CPU machine. Everything else comes pinned from pyproject.toml and finds torch already there.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH_VERSION := 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
STAMP  := $(VENV)/.installed

export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast setup clean browser golang llamacpp sshd lint

demo: $(STAMP)
	$(VENV)/bin/tunesmith quickstart

test: $(STAMP) browser golang sshd
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

# Unit tests only: no embedded model (tests needing SmolLM2's tokenizer use tests/fixtures/tokenizers/;
# those needing its weights, or its name resolved through the cache, are marked integration). To check
# that, run it with TUNESMITH_CACHE=$(mktemp -d) TUNESMITH_EMBEDDED_WHEEL=/nonexistent.whl: any test still
# reaching for the embedded model then fails.
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not integration"

setup: $(STAMP)

# ruff (lint, and formatting checked), the import contracts (config at the bottom, the CLI on top, the
# library never importing the CLI, evaluate and export never importing training) and mypy's type check of
# src/tunesmith (all three configured in pyproject.toml).
LINTED := src tests bench scripts
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# Real llama.cpp for the GGUF export tests (tests/integration/test_gguf_llamacpp.py): llama-cpp-python built
# from the registry's source distribution (about 6 minutes on 2 cores), the wheel cached in WHEEL_CACHE so
# later set-ups only install it. Opt-in: `make test` runs those tests when it is installed; CI builds it.
#
# Built for AVX2/FMA/F16C, not -march=native: on an Intel VM that lists AMX in /proc/cpuinfo without
# granting its tile state, a native build's AMX matmul (ldtilecfg in ggml_backend_amx_mul_mat) dies with a
# general protection fault, taking the test process with it (seen 2026-12-06, llama-cpp-python 0.3.36). Every
# machine we build on has AVX2, and the wheel is cached under a name that says which build it is.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CPP_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
WHEEL_CACHE ?= $(if $(TUNESMITH_CACHE),$(TUNESMITH_CACHE),$(HOME)/.cache/tunesmith)/wheels/llama-avx2

llamacpp: $(STAMP)
	@if $(PY) -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$(LLAMA_CPP_VERSION)')" 2>/dev/null; then \
	  echo "llama-cpp-python $(LLAMA_CPP_VERSION) is installed"; \
	else \
	  if ! ls $(WHEEL_CACHE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1; then \
	    echo "Building llama-cpp-python $(LLAMA_CPP_VERSION) from source (about 6 minutes, once; cached in $(WHEEL_CACHE))"; \
	    mkdir -p $(WHEEL_CACHE); \
	    CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) wheel -q --no-cache-dir --no-deps \
	      --no-binary llama-cpp-python \
	      "llama-cpp-python==$(LLAMA_CPP_VERSION)" -w $(WHEEL_CACHE); \
	  fi; \
	  $(PIP) install -q $(WHEEL_CACHE)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl; \
	fi

# A real tool a test needs and that could not be had: under CI (CI=true) the run fails, since a green CI
# must not hide skipped real-tool checks; elsewhere the tests that need it are skipped and say why.
missing_tool = if [ -n "$${CI:-}" ] && [ "$${CI}" != false ]; then echo "ERROR: $(1); CI needs it for $(2)" >&2; exit 1; \
  else echo "WARNING: $(1); $(2) will be skipped"; fi

# Go, for tests/unit/test_ollama.py: the Modelfile's TEMPLATE rendered by Go's own text/template (what Ollama
# runs). Installed with apt-get where possible; without it that one test is skipped and says why.
golang:
	@if command -v go >/dev/null 2>&1; then \
	  :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "Installing golang-go (apt-get) to check Ollama templates with Go's text/template"; \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends golang-go >/dev/null 2>&1 \
	    || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends golang-go)) \
	    || $(call missing_tool,apt-get could not install golang-go,the real-Go Modelfile test); \
	else \
	  $(call missing_tool,go not found (Debian: apt-get install -y golang-go),the real-Go Modelfile test); \
	fi

# OpenSSH's server for tests/integration/test_remote_ssh.py (`tunesmith remote` against a real sshd on 127.0.0.1,
# started by the tests themselves with temporary keys and port; nothing runs as a service). Installed with
# apt-get where possible; without it those tests are skipped and say why.
SSHD_BIN ?= /usr/sbin/sshd

sshd:
	@if [ -x "$(SSHD_BIN)" ] || command -v sshd >/dev/null 2>&1; then \
	  :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "Installing openssh-server (apt-get) for the remote-training tests"; \
	  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openssh-server >/dev/null 2>&1 \
	    || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openssh-server)) \
	    || $(call missing_tool,apt-get could not install openssh-server,the remote-training tests); \
	else \
	  $(call missing_tool,sshd not found (Debian: apt-get install -y openssh-server),the remote-training tests); \
	fi

# Headless Chromium for tests/integration/test_report_browser.py (report.html in a real browser):
# installed with apt-get (Debian's `chromium`) as root or through passwordless sudo. Where that is not
# possible this says how, and that test FAILS until chromium is there; TUNESMITH_NO_BROWSER=1 skips both.
browser:
	@if [ "$${TUNESMITH_NO_BROWSER:-}" = 1 ]; then \
	  echo "TUNESMITH_NO_BROWSER=1: report.html is not checked in a browser"; \
	elif [ -n "$${TUNESMITH_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
	  :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "Installing chromium (apt-get) for the report's browser test"; \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium) \
	    || echo "WARNING: apt-get could not install chromium; test_report_browser.py will fail"; \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then \
	  echo "Installing chromium (sudo apt-get) for the report's browser test"; \
	  (sudo -n apt-get update -q && sudo -n env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium) \
	    || echo "WARNING: apt-get could not install chromium; test_report_browser.py will fail"; \
	else \
	  echo "WARNING: no chromium and no way to install it here: install Chromium (Debian: apt-get install -y chromium)"; \
	  echo "  or set TUNESMITH_CHROMIUM=/path/to/chrome; test_report_browser.py fails until then (TUNESMITH_NO_BROWSER=1 skips it)"; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "CUDA GPU found: installing torch $(TORCH_VERSION) (CUDA build)"; \
	  $(PIP) install -q "torch==$(TORCH_VERSION)"; \
	else \
	  echo "No CUDA GPU: installing torch $(TORCH_VERSION) (CPU build)"; \
	  $(PIP) install -q "torch==$(TORCH_VERSION)+cpu" 2>/dev/null \
	    || $(PIP) install -q "torch==$(TORCH_VERSION)+cpu" --index-url $(TORCH_CPU_INDEX) --extra-index-url https://pypi.org/simple; \
	fi
	$(PIP) install -q -e ".[test,tracking,quant,lint,cloud]"
	@$(PY) -c "import torch, sys; cpu = not torch.cuda.is_available(); print('torch', torch.__version__, 'cuda' if not cpu else 'cpu')"
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs .pytest_cache

# GPU check for a lent H100/H200 (bench/gpu_check.py, under 8 minutes): the tests marked gpu, LoRA and QLoRA
# on Llama-3.2-1B/3.1-8B shapes with random weights against TRL (packing, padding-free, Liger): tokens/s, MFU,
# peak memory; and plan's CUDA memory prediction against each measured peak. Writes $OUT/gpu-check.json and
# $OUT/gpu-check.md (OUT defaults to ./gpu-check-out). Without a CUDA GPU it stops before installing anything.
.PHONY: gpu-check
gpu-check: $(STAMP)
	@nvidia-smi -L >/dev/null 2>&1 || { echo "gpu-check needs a CUDA GPU: nvidia-smi finds none" >&2; exit 2; }
	$(PIP) install -q -e ".[bench,quant,gpu]"
	HF_HUB_OFFLINE=1 $(PY) bench/gpu_check.py

# The same check on a GPU machine that reaches no registry (this workplace's lent H200: Python 3.12 with
# PyTorch in its image, nothing to fetch, 64 MiB carried with the tree). Here: `make gpu-wheels` (29 MiB:
# what the image lacks, bitsandbytes trimmed to its CPU and CUDA 13 libraries); there, with .gpu-wheels
# carried: `make gpu-check-offline` (the image's python3, the wheels installed --no-index --no-deps).
GPU_WHEELS ?= .gpu-wheels
.PHONY: gpu-wheels gpu-check-offline
gpu-wheels: $(STAMP)
	$(PY) scripts/gpu_wheels.py $(GPU_WHEELS)

gpu-check-offline:
	@nvidia-smi -L >/dev/null 2>&1 || { echo "gpu-check needs a CUDA GPU: nvidia-smi finds none" >&2; exit 2; }
	@ls $(GPU_WHEELS)/*.whl >/dev/null 2>&1 || { echo "no wheels in $(GPU_WHEELS): run make gpu-wheels where the registry answers, and carry $(GPU_WHEELS)" >&2; exit 2; }
	python3 -m pip install -q --no-index --no-deps $(GPU_WHEELS)/*.whl
	PYTHONPATH=$(CURDIR)/src HF_HUB_OFFLINE=1 python3 bench/gpu_check.py
