# make demo  — create .venv (if needed) and run the CPU demo campaign (3 REBEL rounds, about a minute)
# make test  — create .venv (if needed) and run the default test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STORE ?= rebelflow-store
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: demo test test-all lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: the local CPU wheel; anything looser pulls GBs of CUDA wheels (ENV-NOTES.md)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rebelflow run configs/demo-rebel.yaml --store $(STORE)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not vllm and not deepspeed and not gpu"

test-all: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check rebelflow tests bench

bench: $(STAMP)
	$(PY) bench/store_verify.py
	$(PY) bench/train_padding.py
	$(PY) bench/cached_rerun.py
	$(PY) bench/dialogue_batching.py

clean:
	rm -rf $(VENV) $(STORE) .pytest_cache
