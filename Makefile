# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv and installs
# what it needs by itself, so both work on a fresh clone, in either order.
#
#   make demo   torch (CPU build by default) + TorchSAE + ONNX Runtime and imageio-ffmpeg (the `ort` and `video` extras): what the demo runs
#   make test   the same venv + the `dev` extra: test tools, DALI, wandb, hadolint, the Docker-file checks
#
# Each extra has its own stamp, so `make demo` then `make test` installs only the test extra on top.
# TORCH_INDEX picks torch's build: the CPU wheels by default (a fraction of the CUDA build's size); on a
# GPU machine run `make clean`, then e.g. `make test TORCH_INDEX=https://download.pytorch.org/whl/cu126` (CUDA 12) or
# `.../whl/cu130` (CUDA 13). When that index cannot be reached, torch comes from the default index.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
VENV_STAMP := $(VENV)/.torch-installed
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint options-doc install clean

$(VENV_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --timeout 30 --retries 1 --index-url $(TORCH_INDEX) 'torch>=2.4' \
		|| { echo "torch: $(TORCH_INDEX) unavailable, installing torch from the default index"; \
		     $(BIN)/pip install --quiet 'torch>=2.4'; }
	touch $@

$(DEMO_STAMP): $(VENV_STAMP) setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[ort,video]'
	touch $@

$(TEST_STAMP): $(VENV_STAMP) setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(TEST_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/torchsae demo --out demo_run

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m torchsae.cli.options_doc --check

options-doc: $(DEMO_STAMP)  # rewrite the option tables of docs/OPTIONS.md and the README
	$(BIN)/python -m torchsae.cli.options_doc --write

clean:
	rm -rf $(VENV) demo_run
