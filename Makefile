# The two set-up commands are `make run` and `make test`; both build .venv on their own.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test lint bench bench-strategies check eval system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/llm-router serve

check: $(VENV)/.installed
	$(BIN)/llm-router check config.example.yaml

# The eval command on the demo config's mock provider (no account): table, then a report.
eval: $(VENV)/.installed
	$(BIN)/llm-router eval --prompts examples/prompts.jsonl --group demo --group demo-fast \
	  --judge demo-fast --report eval-report.html
	@echo "report: eval-report.html"

# Debian packages the tests drive for real: redis-server (shared state) and Chromium with
# its driver (dashboard and CORS in a browser). Installed when missing and possible.
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null \
	  || echo "warning: could not install$$missing"; \
	fi

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(VENV)/.installed-dev system-deps lint
	$(BIN)/pytest

bench: $(VENV)/.installed-dev
	@command -v wrk >/dev/null 2>&1 || $(SUDO) apt-get install -y -qq wrk >/dev/null 2>&1 || \
	  echo "wrk not installed: the bench falls back to an aiohttp load generator"
	$(BIN)/python -m bench --observability
	$(BIN)/python -m bench.anthropic

bench-strategies: $(VENV)/.installed-dev
	$(BIN)/python -m bench.strategies

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
