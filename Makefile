# Two commands on a fresh machine:  `make run`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
TINY_DIR := .qvq/models/tiny-qwen2vl
CONFIG ?= configs/local-cpu.yaml

.PHONY: setup install model run test test-unit test-integration bench lint clean

setup: install model

install:
	@VENV=$(VENV) bash scripts/install.sh

model: install
	@test -f $(TINY_DIR)/qvq-tiny.json || $(VENV)/bin/qvq model build-tiny --out $(TINY_DIR)

run: setup
	$(VENV)/bin/qvq serve --config $(CONFIG)

test: setup
	$(PY) -m pytest tests

test-unit: setup
	$(PY) -m pytest tests/unit

test-integration: setup
	$(PY) -m pytest tests/integration

bench: setup
	$(PY) -m loadtest.bench_e2e

lint: install
	$(VENV)/bin/ruff check serving tests loadtest scripts

clean:
	rm -rf .qvq/cache .pytest_cache
