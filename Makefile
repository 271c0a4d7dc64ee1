# Every target sets up what it needs: a fresh machine runs `make run` or `make test` directly.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
OUT     ?= out

.PHONY: help venv servers run test lint typecheck unit bench instructions diff chaos scale clean

help:
	@echo "make run    - download the bundled example list into ./$(OUT) (embedded mode)"
	@echo "make test   - lint, type-check and run the whole test suite on real Kafka/S3/Postgres"
	@echo "make lint / make typecheck / make unit - the parts of make test"
	@echo "make bench  - rows/s, images/s and RSS against img2dataset 1.47: download, service, kafka (BENCH_ARGS='--count 1000 --rounds 1 --rss-counts 10000')"
	@echo "make instructions - instructions per row of the worker's and the appender's paths (valgrind; ~1 min)"
	@echo "make diff   - same lists downloaded by img2dataset 1.47 and by this tool: same layouts (installs 1.47)"
	@echo "make scale  - the index and status at 5 M samples on PostgreSQL (SCALE_ARGS='--samples 1000000')"
	@echo "make chaos  - fault injection: CHAOS_ROUNDS (50) rounds of appender crashes and faults, with a summary"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The test bench runs Debian's PostgreSQL (and Chromium for the dashboard's browser test, and
# Prometheus: promtool for the alert rules' unit tests, the server for the Grafana panels and
# the alerts end to end; each test starts its own on a free port, never the package's service);
# Kafka (Tansu) and S3 (moto) come from PyPI.
servers:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)
	@test -x /usr/bin/chromium || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)
	@test -x /usr/bin/prometheus -a -x /usr/bin/promtool || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null)

run: $(STAMP)
	$(BIN)/python examples/demo.py --output_folder $(OUT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy libs/segments/i2d_segments services/fetcher/i2d_fetcher services/appender/i2d_appender services/materializer/i2d_materializer services/status/i2d_status cli/i2d_cli cli/img2dataset tools/imageserver/i2d_imageserver bench

# Two workers: most tests wait on servers and subprocesses, so two at once take about 2/3 of the
# time of one after the other (each worker starts its own Kafka, S3 and PostgreSQL).
unit: $(STAMP) servers
	$(BIN)/pytest -q -n 2

test: lint typecheck unit

# The index and the status service at 5 M samples (not part of `make test`; ~6 min, ~6 GB in
# /tmp): SCALE_ARGS='--samples 1000000', '--engine sqlite' or '--pg-setting shared_buffers=2GB'.
SCALE_ARGS ?=
scale: $(STAMP) servers
	$(BIN)/python -m bench.scale $(SCALE_ARGS)

# The long run of tests/chaos (make test runs a short schedule of it); prints rounds and
# invariants held. CHAOS_SEED=<n> varies the schedule, CHAOS_KINDS=zombie,... narrows it.
CHAOS_ROUNDS ?= 50
chaos: $(STAMP) servers
	CHAOS_ROUNDS=$(CHAOS_ROUNDS) $(BIN)/pytest -q tests/chaos/test_chaos.py

# img2dataset from PyPI in its own venv, pinned (bench/requirements.txt); not part of `make test`.
# The bench's kafka tool runs PostgreSQL as the tests do (`servers`).
BENCH_VENV := .venv-bench
BENCH_ARGS ?=

$(BENCH_VENV)/.installed: bench/requirements.txt
	test -x $(BENCH_VENV)/bin/python || $(PY) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet -r bench/requirements.txt
	touch $@

# pip byte-compiled img2dataset's modules when it installed them; ours (an editable install) are
# compiled first, so neither tool compiles its sources at each start, even where
# PYTHONDONTWRITEBYTECODE is set.
bench: $(STAMP) $(BENCH_VENV)/.installed servers
	$(BIN)/python -m compileall -q libs services cli tools
	$(BIN)/python -m bench.run --img2dataset $(BENCH_VENV)/bin/img2dataset $(BENCH_ARGS)

# Instructions per row of the hot paths under valgrind (bench/instructions.py): a change's gain,
# measured where wall-clock and CPU time drift more than it. Not part of `make test`.
INSTRUCTIONS_ARGS ?=
instructions: $(STAMP)
	@command -v valgrind >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null)
	$(BIN)/python -m compileall -q libs services cli tools
	$(BIN)/python -m bench.instructions $(INSTRUCTIONS_ARGS)

# The differential tests (~40 s; marker `differential`, left out of `make test`): the same lists,
# exif and json layouts through img2dataset 1.47 itself and through this tool.
diff: $(STAMP) $(BENCH_VENV)/.installed
	$(BIN)/pytest -q -m differential

clean:
	rm -rf $(VENV) $(BENCH_VENV) $(OUT) .mypy_cache .ruff_cache .pytest_cache
