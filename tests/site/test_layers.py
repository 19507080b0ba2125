"""The layers hold: `lint-imports` keeps every contract in `.importlinter`, and breaks one
as soon as a forbidden import is added (checked on a copy of the code, so the test proves
the contracts would catch it, not just that today's code is clean)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["bim_core", "bim_node", "bim_sdk", "subnets", "ledger", "registry", "billing", "contributor", "developer", "bim_site"]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(where: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(where / ".importlinter")],
        cwd=where,
        env={"PYTHONPATH": str(where), "PATH": str(LINT_IMPORTS.parent)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_code_keeps_every_layer_contract():
    run = lint_imports(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("bim_core/protocol.py", "import django", "The core imports nothing of the project"),
        ("bim_node/keys.py", "from registry import models", "The node and the SDK import only the core"),
        ("ledger/services.py", "from registry import models", "Layers:"),
        ("subnets/services.py", "from ledger import services", "Layers:"),
        ("registry/dispatch.py", "from ledger.models import Account", "Only the ledger touches its tables"),
        ("registry/jobs.py", "from registry import sweeper", "No module imports another that imports it back"),
    ],
)
def test_a_forbidden_import_breaks_a_contract(tmp_path, module, line, broken):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "static"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    target = tmp_path / module
    # Inside a function, where an import dodging a cycle would hide: the contracts see it.
    target.write_text(target.read_text() + f"\n\ndef _added() -> None:\n    {line}  # noqa\n")
    run = lint_imports(tmp_path)
    assert run.returncode == 1
    assert broken in run.stdout and "BROKEN" in run.stdout, run.stdout
