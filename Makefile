# Two entry points: `make demo` and `make test`. Both create .venv when it is
# missing and install the project into it. `make bench` runs the benchmarks.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# hls.js for the browser tests, pinned by package-lock.json there.
HLS_JS_DIR := tests/browser
# hls.js for the storefront's player, which the origin serves from here.
STOREFRONT_DIR := origin/storefront
# The Workers runtime (workerd) for the Worker smoke test, pinned likewise.
WORKERD_DIR := tests/workerd

# The Pact library reports usage to its vendor unless told not to.
export PACT_DO_NOT_TRACK := true

.PHONY: demo test contract lint tools storefront bench-tools bench media clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

# System tools the tests drive as real clients: ffmpeg, Chromium and hls.js.
# apt-get needs root and hls.js needs npm; without them the tests that need a
# missing tool are skipped and say which tool.
tools: $(HLS_JS_DIR)/node_modules/.package-lock.json storefront \
  $(WORKERD_DIR)/node_modules/.package-lock.json
	@if ! command -v ffmpeg >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y --no-install-recommends ffmpeg >/dev/null || \
	      { apt-get update >/dev/null && apt-get install -y --no-install-recommends ffmpeg >/dev/null; }; \
	  else echo "ffmpeg is missing and cannot be installed here: media tests will be skipped"; fi; \
	fi
	@if [ ! -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y --no-install-recommends chromium >/dev/null || \
	      { apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium >/dev/null; }; \
	  else echo "Chromium is missing and cannot be installed here: browser tests will be skipped"; fi; \
	fi

# npm ci writes node_modules/.package-lock.json, so hls.js is installed again
# when node_modules is missing or package-lock.json changed.
$(HLS_JS_DIR)/node_modules/.package-lock.json: $(HLS_JS_DIR)/package-lock.json
	@if command -v npm >/dev/null; then \
	  cd $(HLS_JS_DIR) && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm is missing, so hls.js cannot be installed: browser tests will be skipped"; fi

$(STOREFRONT_DIR)/node_modules/.package-lock.json: $(STOREFRONT_DIR)/package-lock.json
	@if command -v npm >/dev/null; then \
	  cd $(STOREFRONT_DIR) && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm is missing, so hls.js cannot be installed: the storefront's player will say so"; fi

storefront: $(STOREFRONT_DIR)/node_modules/.package-lock.json

$(WORKERD_DIR)/node_modules/.package-lock.json: $(WORKERD_DIR)/package-lock.json
	@if command -v npm >/dev/null; then \
	  cd $(WORKERD_DIR) && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm is missing, so workerd cannot be installed: the Worker smoke test will be skipped"; fi

# nginx (with secure_link and auth_request) and wrk, for the throughput
# benchmark; without them that part is skipped and says which is missing.
bench-tools:
	@for tool in nginx wrk; do \
	  if ! command -v $$tool >/dev/null && [ ! -x /usr/sbin/$$tool ]; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      export DEBIAN_FRONTEND=noninteractive; \
	      apt-get install -y --no-install-recommends $$tool >/dev/null || \
	        { apt-get update >/dev/null && apt-get install -y --no-install-recommends $$tool >/dev/null; }; \
	    else echo "$$tool is missing and cannot be installed here: the throughput benchmark will be skipped"; fi; \
	  fi; \
	done

# Every benchmark; the figures and plots go to docs/benchmarks.md's sources.
bench: $(STAMP) bench-tools
	$(BIN)/python -m benchmarks

demo: $(STAMP) storefront
	$(BIN)/segmentgate demo

test: $(STAMP) tools bench-tools contract
	$(BIN)/python -m pytest

# The API spec's lint and its breaking changes against the released spec.
contract: $(STAMP)
	$(BIN)/python -m segmentgate.speclint
	$(BIN)/python -m segmentgate.specdiff

lint: $(STAMP)
	$(BIN)/python -m ruff check .

# Rebuild the bundled HLS samples (needs ffmpeg).
media: tools
	media/build-sample.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
