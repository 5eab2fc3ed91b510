# nasnet-det developer targets. The environment lives in .venv and is (re)built by scripts/setup_env.sh
# when its stamp is missing or older than its inputs (`make setup`: whenever the script finds it stale).
SHELL := /bin/bash
PY := .venv/bin/python
STAMP := .venv/.installed
SETUP_INPUTS := pyproject.toml scripts/setup_env.sh requirements/constraints.txt
PYTEST_ARGS ?=
# pytest-xdist workers for `make test` (one per core of the 2-core machine; 0: one process, as plain pytest).
# --dist loadgroup: tests marked @pytest.mark.xdist_group(name) run one after another in one worker (the tests that
# start Ray clusters or process groups of their own, which would starve each other run side by side).
TEST_WORKERS ?= 2

.PHONY: setup test run lint bench clean distclean

# `make setup` always asks the script (seconds when nothing changed), so that e.g. `TORCH_CUDA=cu128 make setup`
# switches the torch build (the choice is part of the stamp's hash); the other targets need only a fresh stamp.
setup:
	bash scripts/setup_env.sh

$(STAMP): $(SETUP_INPUTS)
	bash scripts/setup_env.sh

test: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup \
		--durations=15 $(PYTEST_ARGS) tests

# Every bench/ script (ours vs a peer, same process) -> bench/results.json + bench/RESULTS.md.
# BENCH_ARGS: e.g. --only bench_eval, --skip search_vs_random, --timeout 600.
BENCH_ARGS ?=
bench: $(STAMP)
	PYTHONPATH=$(CURDIR) $(PY) bench/run_all.py $(BENCH_ARGS)

# The whole chain (search -> select -> pretrain -> Faster R-CNN -> COCO AP -> report) on the embedded sample.
run: $(STAMP)
	.venv/bin/nasnet-det run

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf build dist output outputs .pytest_cache .ruff_cache *.egg-info
	find . -path ./.venv -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# Also removes the virtualenv (next `make setup` reinstalls everything).
distclean: clean
	rm -rf .venv
