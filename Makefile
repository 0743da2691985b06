# Two commands do all the set-up: `make demo` and `make test` (see README.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= results/demo
export SD_ENERGY_CACHE ?= $(CURDIR)/.cache/sd-energy
export SD_ENERGY_SIMULATED_DIR ?= $(CURDIR)/.cache/simulated-gpu

.PHONY: venv demo test lint clean slurm-up slurm-down docs-compute

venv: $(STAMP)

# torch==2.13.0 first: a CPU build lies on disk here; an open spec would pull a multi-GB CUDA build.
$(STAMP): setup.cfg pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

demo: venv
	rm -rf $(DEMO_DIR)
	sample-collection-scripts/launch.sh --config configs/experiments/demo.yaml --output-dir $(DEMO_DIR)
	$(BIN)/python -m power_modeling report $(DEMO_DIR) --out $(DEMO_DIR)/report

test: venv
	@bash slurm/local/test-with-cluster.sh $(BIN)/python -m pytest -q -p no:cacheprovider --durations=15 tests

lint: venv
	$(BIN)/ruff check .

slurm-up:
	bash slurm/local/up.sh

slurm-down:
	bash slurm/local/down.sh

clean:
	rm -rf $(VENV) .cache results outputs *.egg-info
