# dpeq developer commands. Everything runs inside .venv (created on demand).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CONFIG ?= experiments/configs/fashion_mnist.py
WORKDIR ?= runs/fashion_mnist
PYTEST_ARGS ?=
BENCH_ARGS ?=
AUDIT_ARGS ?=
REPRODUCE_ARGS ?=

.PHONY: install test bench lint train audit reproduce-fmnist reproduce-cifar10 clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[data,dev]'
	touch $(STAMP)

test: install
	OPENBLAS_NUM_THREADS=1 $(PY) -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS) tests

bench: install
	$(PY) -m experiments.bench.run $(BENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check dpeq experiments tests

train: install
	$(PY) -m dpeq.train --config=$(CONFIG) --workdir=$(WORKDIR)

# Empirical epsilon lower bounds of CONFIG (canaries; see dpeq/audit).
audit: install
	$(PY) -m dpeq.audit --config=$(CONFIG) --workdir=$(WORKDIR)_audit $(AUDIT_ARGS)

reproduce-fmnist: install
	$(PY) -m experiments.reproduce.fashion_mnist $(REPRODUCE_ARGS)

reproduce-cifar10: install
	$(PY) -m experiments.reproduce.cifar10 $(REPRODUCE_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
