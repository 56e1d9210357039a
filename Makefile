# One command to serve, one to test; both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint bench bench-dkim bench-signup browser-deps pg-client clean schemathesis

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "error: Python 3.11 or newer is needed ($(PYTHON) is $$($(PYTHON) --version 2>&1)); run make PYTHON=python3.11"; exit 1; }
	@test ! -x $(BIN)/python || $(BIN)/python -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "removing $(VENV): it was made with a Python older than 3.11"; rm -rf $(VENV); }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# make run PORT=8100: links in emails follow the port unless PUBLIC_URL is set.
PORT ?= 8000
run: $(STAMP)
	$(BIN)/newsletter migrate
	$(BIN)/newsletter serve --host 127.0.0.1 --port $(PORT)

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

# Backups on PostgreSQL run pg_dump and pg_restore of the server's major version (or newer); the
# tests use them when TEST_DATABASE_URL is set. Debian's postgresql-client-<major>, installed only
# when missing or older than the server, and only as root (otherwise the backup tests say why).
pg-client: $(STAMP)
	@test -z "$$TEST_DATABASE_URL" || { \
	  major=$$($(BIN)/python -c 'import os, psycopg; from sqlalchemy.engine import make_url; \
	    url = make_url(os.environ["TEST_DATABASE_URL"]).set(drivername="postgresql"); \
	    print(psycopg.connect(url.render_as_string(hide_password=False)).info.server_version // 10000)') \
	    || { echo "error: cannot reach TEST_DATABASE_URL to learn the server's version"; exit 1; }; \
	  have=$$( { /usr/lib/postgresql/$$major/bin/pg_dump --version || pg_dump --version; } 2>/dev/null \
	    | sed -n 's/.*(PostgreSQL) \([0-9]*\).*/\1/p'); \
	  if [ -z "$$have" ] || [ "$$have" -lt "$$major" ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	      apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql-client-$$major \
	      || { echo "error: no postgresql-client-$$major in the apt sources (add apt.postgresql.org)"; exit 1; }; \
	    else \
	      echo "warning: pg_dump $$major is missing and we are not root: run 'sudo apt-get install postgresql-client-$$major'"; \
	    fi; \
	  fi; }

test: lint browser-deps pg-client
	$(BIN)/pytest

# Schemathesis as a client runs it, against a running server (schemathesis.toml is read here):
# make schemathesis KEY=<editor API key> [URL=http://127.0.0.1:8000] [ARGS="--seed 1"]
URL ?= http://127.0.0.1:$(PORT)
schemathesis: $(STAMP)
	@test -n "$(KEY)" || { echo "error: KEY=<editor API key> is needed (newsletter create-api-key NAME)"; exit 2; }
	$(BIN)/st run $(URL)/openapi.json --checks all --header "Authorization: Bearer $(KEY)" $(ARGS)

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
