# Two entry points (see README): `make demo` runs the whole pipeline on the embedded default,
# `make test` runs the test suite. Both create or reuse .venv/ and install pinned dependencies.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-12)

.PHONY: demo test lint venv bench clean system cross

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[all]'
	rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

demo: $(STAMP) cross
	$(BIN)/metaedge compress

# ARM64 cross toolchain (distro g++ as root, else the ziglang wheel): see tools/setup_cross.sh.
cross: $(STAMP)
	bash tools/setup_cross.sh $(BIN)/python

system:
	bash tools/setup_system.sh

# lint + format check + type check first: seconds, and a failure there needs no 15-minute suite to find
lint: $(STAMP)
	$(BIN)/ruff check metaedge tests bench tools
	$(BIN)/ruff format --check metaedge tests bench tools
	$(BIN)/mypy

test: $(STAMP) system lint
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[all,bench]'
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf metaedge-out .metaedge-cache
