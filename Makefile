# Quickstart: `make demo` runs the whole pipeline, `make test` runs the suite. Both install first.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BYTECODE := $(VENV)/.bytecode
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export PREFECT_SERVER_TELEMETRY_ENABLED ?= false

.PHONY: install test demo bench reference up down status deploy clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt tools/uv_args.py
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON) (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	@# uv installs the pinned set in under 30 s where pip took about 100 s (pip resolves, then unpacks one wheel at a
	@# time). uv is itself pinned in constraints.txt and comes from pip's indexes; it reads no pip configuration, so
	@# tools/uv_args.py hands it pip's (the local CPU torch wheel, say). Where uv cannot be had or fails, pip installs
	@# the same set, as it does where tools/uv_args.py fails (uv without pip's sources would fetch a CUDA torch).
	@# -qq: errors only; pip's warnings were about the machine's own index configuration
	$(BIN)/pip install -qq --disable-pip-version-check -c constraints.txt uv && \
	  uv_args="$$($(BIN)/python tools/uv_args.py)" && \
	  $(BIN)/uv pip install -q --python $(BIN)/python $$uv_args -c constraints.txt -e '.[dev]' || \
	  { echo "uv could not install the environment: pip installs it instead"; \
	    $(BIN)/pip install -qq --disable-pip-version-check --progress-bar off --no-compile -c constraints.txt -e '.[dev]'; }
	touch $(STAMP)

# Bytecode of every installed package, on every core, for the suite: it starts dozens of Python processes, each of
# which would otherwise compile what it imports (on every start where PYTHONDONTWRITEBYTECODE is set, as on this
# project's machines). `make demo` goes without: its few processes compile less than all of site-packages (a 20-step
# demo took 27 s longer without bytecode; compiling it all took 44-51 s). compileall skips the few files that are not
# Python 3 (packages' test data), so its exit status is not the install's.
$(BYTECODE): $(STAMP)
	@$(BIN)/python -m compileall -q -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" >/dev/null 2>&1 || true
	touch $(BYTECODE)

# Two pytest workers, one test file each at a time (--dist loadfile keeps a file's module fixtures, the e2e stack
# say, in one process): most tests wait on servers and subprocesses, so this halves the wall time on 2 cores.
test: install $(BYTECODE)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

demo: install
	$(BIN)/t2v demo

bench: install
	$(BIN)/python bench/bench_data.py --json data/bench_data.json
	$(BIN)/python bench/bench_train.py --json data/bench_train.json
	$(BIN)/python bench/bench_ddp.py --json data/bench_ddp.json

# The evaluation's reference featnet for the default vocabulary, shipped in t2v/reference/featnet/ (~4 min on 2 cores);
# rerun after changing the vocabulary, the renderer or t2v/featnet.py (a test says when it is stale).
reference: install
	$(BIN)/python -c "from t2v import featnet; print(featnet.ship_reference())"

# Local operations stack: Prefect server, MLflow server, deployments served (127.0.0.1 by default).
# Ports and bind address: make up PREFECT_PORT=4300 MLFLOW_PORT=5300 HOST=127.0.0.1
# Auth: the Prefect API needs basic auth unless PREFECT_AUTH=0; MLFLOW_AUTH=1 runs MLflow's basic-auth app.
# RETRAIN_ON_DATA=1: the nightly also runs as soon as data-stage/add-motions completes.
STACK_ARGS = $(if $(PREFECT_PORT),--prefect-port $(PREFECT_PORT)) $(if $(MLFLOW_PORT),--mlflow-port $(MLFLOW_PORT)) $(if $(HOST),--host $(HOST)) \
             $(if $(filter 0,$(PREFECT_AUTH)),--no-prefect-auth) $(if $(filter 1,$(MLFLOW_AUTH)),--mlflow-auth) \
             $(if $(filter 1,$(RETRAIN_ON_DATA)),--retrain-on-data)
up: install
	$(BIN)/python -m deployments.stack up $(STACK_ARGS)

down:
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m deployments.stack down $(STACK_ARGS); else echo "nothing to stop"; fi

status:
	$(BIN)/python -m deployments.stack status $(STACK_ARGS)

# Multi-machine path (prefect.yaml): register the three deployments on the `t2v` process work pool of the Prefect
# server in PREFECT_API_URL; then `prefect worker start --pool t2v` on every machine that runs flows.
deploy: install
	@$(BIN)/prefect work-pool inspect t2v >/dev/null 2>&1 || $(BIN)/prefect work-pool create t2v --type process
	$(BIN)/prefect --no-prompt deploy --all

clean: down
	rm -rf $(VENV)
