#!/usr/bin/env bash
# The browser contributor's JavaScript checks: ESLint (eslint.config.mjs) over
# contributor/static/ and tests/js/, then Node's test runner over tests/js/ (the protocol
# module against Python's bytes in tests/js/fixtures/protocol.json, the connection's state
# machine, the keys). Needs node_modules from scripts/install_frontend.sh; fails on any lint
# error or failing test.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v node >/dev/null || { echo "test_js: node is missing (Debian package: nodejs)" >&2; exit 1; }
[ -x node_modules/.bin/eslint ] || { echo "test_js: no node_modules/.bin/eslint; run bash scripts/install_frontend.sh" >&2; exit 1; }
npx --no-install eslint --max-warnings 0 .
node --test tests/js/
