# nachos workflow. Every target installs what it needs on first use.
#   make supernet && make search     main job on the default config
#   make test                        the test suite
# Pass CONFIG=configs/x.yaml and ARGS="key.sub=value ..." through to any stage.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= configs/cifar10.yaml
ARGS   ?=
NACHOS := $(BIN)/nachos

.PHONY: install data supernet search export finetune eval baseline report archive results bench test clean

install: $(STAMP)

# Re-runs only when the package metadata changes, so a second `make install` takes seconds.
$(STAMP): setup.cfg pyproject.toml
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)  # none, or a broken one
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

data: install
	$(NACHOS) data --config $(CONFIG) $(ARGS)

supernet: install
	$(NACHOS) supernet --config $(CONFIG) $(ARGS)

search: install
	$(NACHOS) search --config $(CONFIG) $(ARGS)

export: install
	$(NACHOS) export --config $(CONFIG) $(ARGS)

finetune: install
	$(NACHOS) finetune --config $(CONFIG) $(ARGS)

eval: install
	$(NACHOS) eval --config $(CONFIG) $(ARGS)

baseline: install
	$(NACHOS) baseline --config $(CONFIG) $(ARGS)

report: install
	$(NACHOS) report --config $(CONFIG) $(ARGS)

# The report's inputs, checkpoints left out, copied to docs/runs/ (kept in git: run folders are not).
archive: install
	$(NACHOS) archive --config $(CONFIG) $(ARGS)

# After `make supernet`: every figure the report reads (supernet endpoints and exports on the
# test split, search with its random-search baseline, the best export fine-tuned, static baselines),
# then the report and its archive.
results: install
	$(NACHOS) eval --supernet --config $(CONFIG) $(ARGS)
	$(NACHOS) search --config $(CONFIG) search.random_baseline=true $(ARGS)
	$(NACHOS) export --config $(CONFIG) export.select=all $(ARGS)
	$(NACHOS) finetune --config $(CONFIG) $(ARGS)
	$(NACHOS) eval --config $(CONFIG) $(ARGS)
	$(NACHOS) baseline --config $(CONFIG) $(ARGS)
	$(NACHOS) baseline --config $(CONFIG) export.baselines=matched $(ARGS)
	$(NACHOS) report --config $(CONFIG) $(ARGS)
	$(NACHOS) archive --config $(CONFIG) $(ARGS)

bench: install
	$(BIN)/python -m bench $(ARGS)

test: install
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf runs .pytest_cache build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
