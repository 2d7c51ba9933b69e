# `make distill` and `make test` are all a fresh clone needs.
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export PREFECT_HOME ?= $(CURDIR)/data/prefect
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: setup teacher distill test bench serve reproduce views-study fidelity finetune-demo clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the pinned dependencies

teacher: $(STAMP)  ## stage 1 only: train the digits teacher, write its store
	$(BIN)/kd teacher

distill: $(STAMP)  ## both stages on digits (5 labels per class, the rest a transfer set), then the leaderboard
	$(BIN)/kd run --seeds 0 1 2 --labelled-per-class 5

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

finetune-demo: $(STAMP)  ## the finetune recipe, CPU-sized and offline: a generated folder, stand-in weights → data/demo/
	$(BIN)/python -m experiments.finetune_demo data/demo
	TORCH_HOME=data/demo/torch $(BIN)/kd run --preset finetune --dataset imagefolder:data/demo/photos \
	  --arch torchvision:resnet18 --weights IMAGENET1K_V1 --resize 72 --crop 64 --epochs 2 --batch-size 16 \
	  --views 4 --workers 0 --student-arch torchvision:mobilenet_v3_small --student-crop 64 --student-epochs 2 \
	  --seeds 0 --temperatures 4

clean:  ## remove generated data (datasets you downloaded are kept)
	rm -rf data/stores data/checkpoints data/reports data/bench data/prefect
