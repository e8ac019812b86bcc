#!/usr/bin/env bash
# The whole test suite: creates .venv on first use, installs the project with its test extras,
# then runs ruff, mypy (strict) and pytest (two workers). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -e '.[test]'
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check connect machines sources outputs store api bench
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
# two workers: most tests wait on subprocesses, sockets and brokers, so two keep both cores busy
.venv/bin/python -m pytest -n 2 "$@"
