#!/usr/bin/env bash
# Install everything, then lint, check formatting and run the whole test suite.
# Needs PostgreSQL on 127.0.0.1:5432 (trust auth; TEST_POSTGRES_URL overrides) for the Postgres paths.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
# Two workers (TEST_WORKERS): the tests wait on servers, subprocesses and clocks about as much
# as they compute. Three load this 2-core machine enough to starve the real-time rate-cap test.
.venv/bin/pytest -n "${TEST_WORKERS:-2}" "$@"
