# One venv in .venv; `make` targets set it up on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup quickstart demo test test-browser test-ray test-slow test-landscape lint zoo bench bench-search bench-zoo bench-landscape bench-layer bench-methods clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,botorch]'
	touch $(STAMP)

setup: $(STAMP)

QS_OUT := runs/quickstart-output

## The main job: build the toy zoo (cached), run the quickstart search (or finish an interrupted
## one), print its Pareto front.
quickstart: $(STAMP)
	$(BIN)/evomerge zoo build
	if [ -f $(QS_OUT)/ledger.db ]; then $(BIN)/evomerge resume $(QS_OUT); \
	else $(BIN)/evomerge search runs/quickstart.yaml --out $(QS_OUT); fi
	$(BIN)/evomerge front $(QS_OUT)

## The merge engine alone, on tiny generated models.
demo: $(STAMP)
	$(BIN)/evomerge demo

## The default test suite (fast, CPU, offline), the linter and the import contracts (layers,
## no cycles: see README, Architecture).
test: $(STAMP)
	$(BIN)/ruff check evomerge tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

## The real-browser test of the MLflow UI: Debian's Chromium driven by Playwright (installs both
## on first use; apt needs root, as on CI).
test-browser: $(STAMP)
	[ -x /usr/bin/chromium ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	$(BIN)/python -c "import playwright" 2>/dev/null || $(BIN)/pip install --quiet -e '.[browser]'
	$(BIN)/python -m pytest -q -m browser

## The Ray executor on a local Ray runtime and on a three-node loopback cluster, the quickstart
## included (builds the toy zoo first if it is not cached; Ray and its actors start slowly on 2 cores).
test-ray: $(STAMP)
	$(BIN)/python -m pytest -q -m ray

## Slower tests, kept out of the default suite and run by CI: TPE against random search on the real
## toy zoo (built first if it is not cached), every shipped task on a zoo model, the crash drill's
## short form, the README walk-through on a fresh copy and the landscape its quickstart found.
test-slow: $(STAMP)
	$(BIN)/evomerge zoo build --no-report
	$(BIN)/python -m pytest -q --durations=12 -m "slow and not landscape and not ray and not browser"

## The zoo's landscape checks: not in CI until they hold on every build of benchmarks/zoo_robustness.py.
test-landscape: $(STAMP)
	$(BIN)/python -m pytest -q -m landscape

## Train the toy model zoo (cached) and print its accuracy table.
zoo: $(STAMP)
	$(BIN)/evomerge zoo build

bench: $(STAMP)
	$(BIN)/python benchmarks/merge_throughput.py --methods ties,dare_ties,linear

## Best fitness against examples scored per optimiser on the zoo, 5 search seeds, against the
## mergekit-evolve-style baseline on the same spaces (~2 h on 2 cores).
bench-search: $(STAMP)
	$(BIN)/evomerge zoo build --no-report
	$(BIN)/python benchmarks/search_efficiency.py --seeds 0,1,2,3,4 --optimizers random,tpe,cmaes \
		--compact cmaes --workers 2 --baseline-budget 270

## The zoo over 5 seeds x 1 and 2 threads (10 builds, ~35 min on 2 cores).
bench-zoo: $(STAMP)
	$(BIN)/python benchmarks/zoo_robustness.py

## The quickstart's best recipe against the average, task arithmetic and random recipes, per zoo
## seed (a build and a quickstart search per seed, ~9 min each on 2 cores).
bench-landscape: $(STAMP)
	$(BIN)/python benchmarks/zoo_landscape.py

## Parameter-space against layer-path search on both zoo depths (default, blocks), zoo seeds 0-2
## (~15 min per seed on 2 cores).
bench-layer: $(STAMP)
	$(BIN)/python benchmarks/layer_space.py

## Every merge method's best recipe on the zoo, same optimiser and budget, search seeds 0-2
## (~20 min per seed on 2 cores).
bench-methods: $(STAMP)
	$(BIN)/evomerge zoo build --no-report
	$(BIN)/python benchmarks/method_zoo.py --seeds 0 1 2

clean:
	rm -rf $(VENV) runs/demo-output $(QS_OUT) benchmarks/_work
