# Quickstart: `make demo` runs the whole pipeline, `make test` runs the suite. Both install first.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_TELEMETRY_ENABLED ?= false

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --progress-bar off -c constraints.txt -e '.[dev]'
	touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

demo: install
	$(BIN)/t2v demo

bench: install
	$(BIN)/python bench/bench_data.py

clean:
	rm -rf $(VENV) data/shards data/manifest*.parquet
