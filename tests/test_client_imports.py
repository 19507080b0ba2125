"""The clients never load the registry: `bim-node --help` and `bim --help` leave Django and
the registry's apps unimported, and every module of bim_core, bim_node and bim_sdk imports
in an interpreter where those cannot be imported at all.

Each check runs in a fresh interpreter (this one has Django loaded by pytest-django), so a
stray import anywhere on those paths fails here on every test run; scripts/check_client_install.sh
proves the same for an install without Django at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER_PACKAGES = ("django", "rest_framework", "channels", "celery", "registry", "ledger", "subnets", "contributor", "bim_site")

# Prints the top-level names of the server's packages that got imported, as JSON.
REPORT = f"""
import json, sys
print(json.dumps(sorted({{name.split(".")[0] for name in sys.modules}} & set({SERVER_PACKAGES!r}))))
"""
# Makes the server's packages unimportable, as they are in a client's own venv.
WITHOUT_SERVER = f"""
import sys
class NoServer:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {SERVER_PACKAGES!r}:
            raise ModuleNotFoundError(f"{{name}} is not installed here", name=name)
sys.meta_path.insert(0, NoServer())
"""
ALL_CLIENT_MODULES = """
import importlib, pkgutil
for package in ("bim_core", "bim_node", "bim_sdk"):
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        importlib.import_module(info.name)
"""


def python(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def loaded_server_packages(code: str) -> list[str]:
    done = python(code + REPORT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize(
    ("module", "program"), [("bim_node.__main__", "bim-node"), ("bim_sdk.cli", "bim")]
)
def test_a_clients_help_loads_no_server_package(module: str, program: str) -> None:
    code = f"""
import contextlib, io, runpy, sys
sys.argv = [{program!r}, "--help"]
help_text = io.StringIO()
with contextlib.redirect_stdout(help_text):
    try:
        runpy.run_module({module!r}, run_name="__main__")
    except SystemExit as exc:
        assert exc.code == 0, exc.code
assert help_text.getvalue().startswith("usage: {program} "), help_text.getvalue()
"""
    assert loaded_server_packages(code) == []


def test_every_client_module_imports_where_the_server_is_not_installed() -> None:
    # Blocked rather than looked for: diskcache (a llama-cpp-python dependency) imports
    # Django whenever it is installed, as it is in the project venv, and copes without it.
    done = python(WITHOUT_SERVER + ALL_CLIENT_MODULES + "print('imported')")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["imported"]


def test_the_checks_notice_a_server_import() -> None:
    """The checks themselves: a client that did import Django would be caught by both."""
    assert loaded_server_packages("import bim_sdk.cli, django.conf") == ["django"]
    done = python(WITHOUT_SERVER + "import bim_sdk.cli, django.conf")
    assert done.returncode != 0
    assert "ModuleNotFoundError: django is not installed here" in done.stderr
