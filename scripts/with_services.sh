#!/usr/bin/env bash
# Run a command with DATABASE_URL and REDIS_URL pointing at real services (benchmarks).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PY=.venv/bin/python
source scripts/services.sh
trap bim_services_stop EXIT
bim_services_ensure
"$@"
