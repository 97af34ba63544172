# One venv in .venv; `make` targets set it up on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup quickstart test test-slow lint zoo bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## The main job on the embedded default (until the quickstart search lands: the merge demo).
quickstart: $(STAMP)
	$(BIN)/evomerge demo

## The default test suite (fast, CPU, offline) and the linter.
test: $(STAMP)
	$(BIN)/ruff check evomerge tests benchmarks
	$(BIN)/python -m pytest -q

## Slower tests, kept out of the default suite.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow" ; rc=$$?; [ $$rc -eq 5 ] && echo "no slow tests yet" && exit 0; exit $$rc

## Train the toy model zoo (cached) and print its accuracy table.
zoo: $(STAMP)
	$(BIN)/evomerge zoo build

bench: $(STAMP)
	$(BIN)/python benchmarks/merge_throughput.py --methods ties,dare_ties,linear

clean:
	rm -rf $(VENV) runs/demo-output benchmarks/_work
