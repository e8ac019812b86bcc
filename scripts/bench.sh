#!/usr/bin/env bash
# The benchmark: prints each figure beside a ceiling measured in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q -e '.[test]' >/dev/null
exec .venv/bin/python -m bench "$@"
