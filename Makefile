# `make distill` and `make test` are all a fresh clone needs.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export PREFECT_HOME ?= $(CURDIR)/data/prefect
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup teacher distill test bench serve reproduce views-study fidelity clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the pinned dependencies

teacher: $(STAMP)  ## stage 1 only: train the digits teacher, write its store
	$(BIN)/kd teacher

distill: $(STAMP)  ## both stages on digits, then print the leaderboard
	$(BIN)/kd run --seeds 0 1 2

test: $(STAMP)  ## the whole suite (benchmarks excluded)
	$(BIN)/python -m pytest -q

bench: $(STAMP)  ## performance benchmarks (not part of `make test`); JSON under data/bench/, then docs/performance.md
	mkdir -p data/bench
	$(BIN)/python -m pytest -q -s -p no:cacheprovider -o addopts="" -ra --strict-markers tests/benchmarks; \
	status=$$?; $(BIN)/python tests/benchmarks/report.py && exit $$status

reproduce: $(STAMP)  ## the literature's claims on digits, 3 seeds each → data/reports/reproduce/
	$(BIN)/python -m experiments.reproduce_flow

views-study: $(STAMP)  ## stale vs K-view vs online soft targets under augmentation → data/reports/views-study/
	$(BIN)/python -m experiments.views_study

fidelity: $(STAMP)  ## how much of the teacher-student gap each recipe closes, on digits → data/reports/fidelity/
	$(BIN)/python -m experiments.fidelity_flow

serve: $(STAMP)  ## serve the teacher, distill and pipeline flows from this process (Prefect)
	$(BIN)/python -m flows.serve

clean:  ## remove generated data (datasets you downloaded are kept)
	rm -rf data/stores data/checkpoints data/reports data/bench data/prefect
