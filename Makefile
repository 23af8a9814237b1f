# Two commands for a fresh machine: `make demo` and `make test` (both install first when needed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= demo_out

.PHONY: install demo test test-all bench gpu-check clean cluster-up cluster-down cluster-status

install: $(STAMP)

# Where the system python already has a CUDA torch (a GPU image), the venv sees it; otherwise the
# CPU wheel torch==2.13.0 goes in first so that nothing pulls GBs of CUDA packages.
$(STAMP): pyproject.toml
	@if $(PYTHON) -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null; then \
		echo "CUDA torch found on $(PYTHON): venv uses system site-packages"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
		$(PY) -m pip install -q --upgrade pip; \
		$(PY) -m pip install -q torch==2.13.0; \
	fi
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: install
	$(VENV)/bin/dfd-ray demo --out $(DEMO_OUT)

# `make test` leaves out the tests marked slow (pyproject.toml); `make test-all` runs every test.
test: install
	$(PY) -m pytest -q --durations=10 -m "not slow" tests

test-all: install
	$(PY) -m pytest -q --durations=10 tests

# On a CUDA machine: gsplat compiled, its parity tests, render / inference / training figures, one
# report under $(GPU_OUT) inside 8 minutes (jobs/gpu_check.py). Without CUDA it says so and exits 0.
GPU_OUT ?= gpu_check
gpu-check: install
	$(PY) jobs/gpu_check.py --out $(GPU_OUT)

bench: install
	$(PY) jobs/bench_synth.py
	$(PY) jobs/bench_accuracy.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache

# Laptop dev cluster: a local Ray head and S3 endpoint. `eval "$(cluster/up.sh)"` exports its variables.
cluster-up: install
	cluster/up.sh

cluster-down:
	cluster/down.sh

cluster-status:
	cluster/status.sh
