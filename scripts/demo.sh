#!/usr/bin/env bash
# The demo: a simulated CGM → the machines → a local SQLite store (and the API when enabled),
# with live logs of every transition and every stored frame. Ctrl-C stops it cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q -e . >/dev/null
exec .venv/bin/nightscout-connect demo "$@"
