# The two commands of the README: `make demo` and `make test`. Both run the
# idempotent set-up first, so they work on a fresh Debian/Ubuntu machine.
VENV := .venv
PACKAGES := formats blockemu nodeagent cci
LINTED := $(PACKAGES) tests bench

.PHONY: setup demo test lint bench

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

lint: setup
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest

bench: setup
	$(VENV)/bin/python bench/array_io.py

.PHONY: bench-replication
bench-replication: setup
	$(VENV)/bin/python bench/replication.py

.PHONY: bench-fuse
bench-fuse: setup
	dpkg -s fio >/dev/null 2>&1 || apt-get install -y fio
	$(VENV)/bin/python bench/fuse_io.py

.PHONY: bench-failover
bench-failover: setup
	$(VENV)/bin/python bench/failover.py

.PHONY: bench-protocol bench-lab
bench-protocol: setup
	$(VENV)/bin/python bench/protocol.py

bench-lab: setup
	$(VENV)/bin/python bench/lab_takeover.py
