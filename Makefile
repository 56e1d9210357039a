# One command to serve, one to test; both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench bench-dkim bench-signup browser-deps clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "error: Python 3.11 or newer is needed ($(PYTHON) is $$($(PYTHON) --version 2>&1)); run make PYTHON=python3.11"; exit 1; }
	@test ! -x $(BIN)/python || $(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "removing $(VENV): it was made with a Python older than 3.11"; rm -rf $(VENV); }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/newsletter migrate
	$(BIN)/newsletter serve --host 127.0.0.1 --port 8000

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Browser tests drive Debian's chromium (Playwright cannot download browsers here). Installed
# only when missing; without root it is left to the tests (skip locally, fail when CI=true).
browser-deps:
	@test -x /usr/bin/chromium || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	  else \
	    echo "warning: /usr/bin/chromium is missing and we are not root: run 'sudo apt-get install chromium'"; \
	  fi; }

test: lint browser-deps
	$(BIN)/pytest

# Send throughput with DKIM off and on (RSA-2048) in one run; ARGS="--dkim both" adds Ed25519.
bench: $(STAMP)
	$(BIN)/python bench/send_throughput.py --dkim $(ARGS)

# DKIM signatures per second on one core (RSA-2048, Ed25519, dkimpy for comparison).
bench-dkim: $(STAMP)
	$(BIN)/python bench/dkim.py $(ARGS)

# Signup flood on loopback (SQLite; add ARGS="--database-url postgresql://..." for PostgreSQL).
bench-signup: $(STAMP)
	$(BIN)/python bench/signup_flood.py $(ARGS)

clean:
	rm -rf $(VENV) var/*.db var/mail
