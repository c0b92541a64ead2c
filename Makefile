# Two entry points: `make demo` and `make test`. Both create .venv when it is
# missing and install the project into it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint tools media clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# System tools the tests drive as real clients. apt-get needs root; without
# it the tests that need a missing tool are skipped and say which tool.
tools:
	@if ! command -v ffmpeg >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y --no-install-recommends ffmpeg >/dev/null || \
	      { apt-get update >/dev/null && apt-get install -y --no-install-recommends ffmpeg >/dev/null; }; \
	  else echo "ffmpeg is missing and cannot be installed here: media tests will be skipped"; fi; \
	fi

demo: $(STAMP)
	$(BIN)/segmentgate demo

test: $(STAMP) tools
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/python -m ruff check .

# Rebuild the bundled HLS samples (needs ffmpeg).
media: tools
	media/build-sample.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
