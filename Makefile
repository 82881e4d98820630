# Thin wrappers; every target installs what is missing first.
.PHONY: deps lab lab-down test test-unit lint bench bench-proxy bench-scale

deps:
	./scripts/install-deps

lab: deps
	.venv/bin/knet lab up --nodes 3 --demo

lab-down: deps
	.venv/bin/knet lab down

test: deps
	.venv/bin/python -m pytest -q tests

test-unit: deps
	.venv/bin/python -m pytest -q tests/unit

# Style, the layering contract ([tool.importlinter] in pyproject.toml), types ([tool.mypy]).
lint: deps
	.venv/bin/ruff check .
	.venv/bin/lint-imports
	.venv/bin/mypy

bench: deps
	.venv/bin/python -m bench.cni

# kproxy's data paths vs direct pod access, and sync cost by size (--plot needs the bench extra).
bench-proxy: deps
	.venv/bin/python -m bench.proxy_modes

# End to end at cluster size: API write -> packet per proxy mode at 1,000/5,000/10,000 services.
bench-scale: deps
	.venv/bin/python -m bench.scale
