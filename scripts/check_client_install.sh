#!/usr/bin/env bash
# The clients install without Django: each extra (`node`, `sdk`) goes into a brand-new venv
# outside the repository, its command answers --help, and `import django` fails there.
# It installs a copy of the working tree's files (tracked and not ignored), so a file the
# package needs but git does not have fails here as it would for anyone else.
# Usage: bash scripts/check_client_install.sh   (PYTHON=python3.11 by default)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3.11}"
# llama-cpp-python (extra `node`) compiles from source; its native build segfaults here.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF}"

WORK="$(mktemp -d /tmp/bim-client-install.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/src"
# (.venv may be a symlink to a shared venv, which .gitignore's `.venv/` does not match.)
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | grep -zv '^\.venv$' | xargs -0 cp -P --parents -t "$WORK/src")

# Run from outside any source tree: `python -c` puts the working directory on sys.path.
cd "$WORK"

# A module list the extra must import (every module it ships that its users run).
SDK_MODULES="bim_sdk bim_sdk.client bim_sdk.results bim_sdk.config bim_sdk.receipts bim_sdk.cli bim_sdk.cli_commands bim_sdk.cli_errors bim_sdk.p2p bim_core.protocol bim_core.families bim_core.job_inputs bim_core.png bim_core.http bim_core.ice bim_core.peer"
NODE_MODULES="bim_node bim_node.__main__ bim_node.artifacts bim_node.handshake bim_node.jobs bim_node.keys \
bim_node.registry_api bim_node.session bim_core.runtimes.runners bim_core.runtimes.embedder \
bim_core.runtimes.upscaler bim_core.runtimes.generator bim_core.contracts bim_core.ice bim_core.peer bim_node.p2p"

check_extra() {
    local extra="$1" command="$2" modules="$3" venv="$WORK/venv-$1"
    echo "== [$extra] $PYTHON -m venv $venv"
    "$PYTHON" -m venv "$venv"
    echo "== [$extra] pip install '$WORK/src[$extra]'"
    # -qq: errors only (this machine's pip configuration warns about every package)
    "$venv/bin/pip" install -qq "$WORK/src[$extra]"
    echo "== [$extra] $command --help"
    "$venv/bin/$command" --help >"$WORK/help-$extra.txt"
    head -n 1 "$WORK/help-$extra.txt"
    echo "== [$extra] import $modules"
    "$venv/bin/python" -c "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]" $modules
    echo "ok: every module imports"
    echo "== [$extra] python -c 'import django' (must fail)"
    if "$venv/bin/python" -c "import django" 2>/dev/null; then
        echo "FAIL: django is installed in the $extra venv" >&2
        return 1
    fi
    echo "ok: no django in the $extra venv"
    if "$venv/bin/pip" list --format=freeze | grep -iE '^(django|djangorestframework|channels|celery|daphne)=='; then
        echo "FAIL: a registry package is installed in the $extra venv" >&2
        return 1
    fi
    echo "ok: [$extra] $("$venv/bin/pip" list --format=freeze | wc -l) packages installed, none of the registry's"
}

check_extra sdk bim "$SDK_MODULES"
check_extra node bim-node "$NODE_MODULES"
echo "client install check passed"
