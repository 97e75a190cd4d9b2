# timebank: `make run` serves the API on http://127.0.0.1:8000 (SQLite file ./timebank.db);
# `make test` runs every check CI runs. Both create .venv and install the locked dependencies.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
LOCK   := requirements/dev.lock
STAMP  := $(VENV)/.installed-$(shell cat $(LOCK) pyproject.toml 2>/dev/null | cksum | cut -d' ' -f1)
PG_TEST_URL ?= $(or $(TIMEBANK_TEST_DATABASE_URL),postgresql+asyncpg://postgres@127.0.0.1:5432/test)
COVERAGE_FLOOR := 95

.PHONY: install run test lint typecheck migrations-check openapi-check test-sqlite test-postgres \
        openapi fmt lock bench clean

$(STAMP): $(LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)

run: install
	$(BIN)/timebank serve --host 127.0.0.1 --port 8000

# Everything CI runs: static checks, migrations, the contract, the suite on both databases
# (with branch coverage), then the short soak (PostgreSQL), crash (SQLite kill -9) and fuzz runs.
test: install lint typecheck migrations-check openapi-check test-sqlite test-postgres
	$(BIN)/coverage report --fail-under=$(COVERAGE_FLOOR)
	$(MAKE) --no-print-directory soak-short crash-short fuzz-short

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

# Migrations build an empty database to head, and the models agree with them (alembic check).
migrations-check: install
	@rm -f .migrations-check.db
	TIMEBANK_DATABASE_URL=sqlite+aiosqlite:///.migrations-check.db $(BIN)/alembic upgrade head
	TIMEBANK_DATABASE_URL=sqlite+aiosqlite:///.migrations-check.db $(BIN)/alembic check
	@rm -f .migrations-check.db*
	TIMEBANK_TEST_DATABASE_URL=$(PG_TEST_URL) $(BIN)/python -m tests.migration_check

openapi-check: install
	$(BIN)/timebank openapi --check

test-sqlite: install
	TIMEBANK_TEST_BACKEND=sqlite $(BIN)/pytest --cov --cov-branch --cov-report= -p no:cacheprovider

test-postgres: install
	TIMEBANK_TEST_BACKEND=postgresql TIMEBANK_TEST_DATABASE_URL=$(PG_TEST_URL) \
		$(BIN)/pytest --cov --cov-branch --cov-append --cov-report= -p no:cacheprovider

openapi: install
	$(BIN)/timebank openapi

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Re-pin every dependency (needs the package index).
lock: install
	$(BIN)/pip-compile --quiet --strip-extras --extra dev -o requirements/dev.lock pyproject.toml
	$(BIN)/pip-compile --quiet --strip-extras -o requirements/runtime.lock pyproject.toml

clean:
	rm -rf $(VENV) .coverage .mypy_cache .ruff_cache .pytest_cache

# Reliability (docs/reliability.md): the real server on a fresh database under a mixed load;
# each exits non-zero when a check fails. The short forms are for CI (<= ~90 s and ~60 s);
# only the long `crash` restarts the shared PostgreSQL cluster (once).
.PHONY: soak soak-short crash crash-short

soak: install
	$(BIN)/python -m reliability.soak --duration 180 --clients 32

soak-short: install
	$(BIN)/python -m reliability.soak --duration 30 --clients 32

crash: install
	$(BIN)/python -m reliability.crash --backend both --duration 90 --sqlite-duration 60 \
		--clients 32 --kill-every 4:10 --pg-restarts 1

crash-short: install
	$(BIN)/python -m reliability.crash --backend sqlite --duration 25 --clients 32 --kill-every 2:5

# Fuzz and audit (docs/security.md; docs/reliability.md, "Fuzz and security"). `fuzz-short`
# is the CI run (a few minutes at most). `audit` needs PyPI's JSON API; --strict fails when a
# pin could not be checked. Each advisory recorded in docs/security.md is ignored by its id.
.PHONY: fuzz fuzz-short audit
AUDIT_STRICT ?= --strict
AUDIT_IGNORE := --ignore-vuln GHSA-wj6h-64fc-37mp --ignore-vuln CVE-2024-23342

fuzz: install
	$(BIN)/python -m fuzz.run

fuzz-short: install
	$(BIN)/python -m fuzz.run --short

audit: install
	$(BIN)/pip-audit $(AUDIT_STRICT) --no-deps --disable-pip --progress-spinner off \
		$(AUDIT_IGNORE) -r requirements/runtime.lock
	$(BIN)/pip-audit $(AUDIT_STRICT) --no-deps --disable-pip --progress-spinner off \
		$(AUDIT_IGNORE) -r requirements/dev.lock
