#!/usr/bin/env bash
# `make test`: the linters and the layer contracts, then the whole suite against real
# PostgreSQL and Redis. Arguments go to pytest (`bash scripts/test.sh tests/ledger -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PY=.venv/bin/python

.venv/bin/ruff check .
.venv/bin/lint-imports --no-cache
bash scripts/test_js.sh

source scripts/services.sh
trap bim_services_stop EXIT
bim_services_ensure
bim_test_tools_ensure
"$VENV_PY" -m pytest "$@"
