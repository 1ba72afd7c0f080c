# Two commands on a fresh machine:  `make run`  and  `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
TINY_DIR := .qvq/models/tiny-qwen2vl
CONFIG ?= configs/local-cpu.yaml

.PHONY: setup install model run test test-unit test-integration test-cluster test-k8s k8s-generate bench lint clean

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

test-cluster: setup
	$(PY) -m pytest tests/cluster tests/integration/test_tensor_parallel.py

test-k8s: install
	$(PY) -m pytest tests/k8s

k8s-generate: install
	$(VENV)/bin/qvq k8s generate

bench: setup
	$(PY) -m loadtest.bench_e2e

lint: install
	$(VENV)/bin/ruff check serving tests loadtest scripts
	$(VENV)/bin/qvq k8s check

clean:
	rm -rf .qvq/cache .pytest_cache
