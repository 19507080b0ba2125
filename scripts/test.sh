#!/usr/bin/env bash
# `make test`: the whole suite against real PostgreSQL and Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PY=.venv/bin/python
source scripts/services.sh
trap bim_services_stop EXIT
bim_services_ensure
"$VENV_PY" -m pytest "$@"
