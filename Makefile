# birdnet-tf developer tasks. `make help` lists them.
#
#   make venv     .venv with the package (editable) and its dev tools
#   make demo     train, evaluate, export and predict on the bundled sample (a few minutes on a CPU)
#   make test     the test suite (what CI runs)
#   make bench    the benchmarks in benchmarks/

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

DEMO_DATA   := examples/xc-sample
DEMO_RECIPE := pipelines/demo.yaml
DEMO_RUN    := runs/demo
# the demo prepares its audio here, not in ~/.cache
DEMO_ENV    := BIRDNET_TF_CACHE="$(CURDIR)/.cache"

.PHONY: help venv demo demo-clean test bench clean distclean

help:
	@echo "make venv        create $(VENV) and install birdnet-tf (editable) with its dev extras"
	@echo "make demo        train on $(DEMO_DATA) with $(DEMO_RECIPE), evaluate, export, predict -> $(DEMO_RUN)"
	@echo "make demo-clean  remove $(DEMO_RUN) (needed after editing $(DEMO_RECIPE))"
	@echo "make test        run the test suite"
	@echo "make bench       run the benchmarks in benchmarks/"
	@echo "make clean       remove the demo run, the demo cache and Python caches"
	@echo "make distclean   clean, and remove $(VENV)"

# ------------------------------------------------------------------ environment
venv: $(STAMP)

# Re-installs only when setup.py (pins, extras) changed; the package itself is editable.
$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e '.[dev]'
	touch $@

# ------------------------------------------------------------------------ demo
demo: venv
	$(DEMO_ENV) $(BIN)/birdnet-tf train --config $(DEMO_RECIPE) --data $(DEMO_DATA) --out $(DEMO_RUN) \
		|| { echo "hint: 'make demo-clean' starts the demo afresh (needed after changing the recipe or upgrading)"; exit 2; }
	$(DEMO_ENV) $(BIN)/birdnet-tf export $(DEMO_RUN) --out $(DEMO_RUN)/export --force
	$(DEMO_ENV) $(BIN)/birdnet-tf predict $(DEMO_RUN)/export $(DEMO_DATA)/audio \
		--out $(DEMO_RUN)/predictions.csv --force
	$(DEMO_ENV) $(BIN)/birdnet-tf predict $(DEMO_RUN)/export $(DEMO_DATA)/audio --window-s 3 \
		--format raven --min-score 0.5 --merge-gap-s 0 --out $(DEMO_RUN)/raven --force --no-progress
	@echo
	@echo "demo finished:"
	@echo "  model (Keras):      $(DEMO_RUN)/best.keras"
	@echo "  model (SavedModel): $(DEMO_RUN)/export"
	@echo "  report:             $(DEMO_RUN)/eval/report.json"
	@for f in $(DEMO_RUN)/eval/*.png; do echo "  plot:               $$f"; done
	@echo "  predictions:        $(DEMO_RUN)/predictions.csv (per file)"
	@echo "  detections:         $(DEMO_RUN)/raven/ (Raven selection tables, 3-s windows, score >= 0.5)"
	@echo "  TensorBoard:        $(BIN)/tensorboard --logdir $(DEMO_RUN)/logs"

demo-clean:
	rm -rf $(DEMO_RUN)

# ----------------------------------------------------------------------- tests
test: venv
	.venv/bin/python -m pytest -q -x -n 2 --dist loadfile --durations=15 tests

bench: venv
	$(BIN)/python benchmarks/pipeline_throughput.py
	$(BIN)/python benchmarks/train_xc_pr20.py
	$(BIN)/python benchmarks/inference_speed.py

# ---------------------------------------------------------------------- clean
# Leaves other runs under runs/ alone: they may be real training runs.
clean: demo-clean
	rm -rf .cache .pytest_cache build dist
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
