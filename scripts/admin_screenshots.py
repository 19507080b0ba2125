"""Screenshots of operators' admin pages for docs/: seeds a small market with a history
(tests/operator_seed.py: settled jobs, a disputed 2-of-3 tie-break, benchmarks, a ban) in a
throwaway SQLite database, serves it with daphne on loopback, logs in as a superuser with
headless Debian Chromium (/usr/bin/chromium, never a downloaded browser) and saves each page
of PAGES at 1440 x 900 (the whole page, at that viewport).

    .venv/bin/python scripts/admin_screenshots.py                 # every page, into docs/
    .venv/bin/python scripts/admin_screenshots.py --only admin-node.png --out /tmp/shots

One more page is one more entry in PAGES: the file name and a function from the seeded
market (tests.operator_seed.OperatorMarket) to the page's path. Nothing outside the temporary directory
is written but the PNGs. A page that answers other than 200, logs a console error (a CSP
violation) or loads a resource that fails stops the script with an error.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1440, "height": 900}
PASSWORD = "screenshots-only"  # a throwaway database's superuser
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1 , EXCLUDE localhost",
]


def _node_page(market) -> str:
    # The node out-voted in the tie-break: banned, struck, with verdicts of both outcomes.
    node = market.disputed.assignments.get(role="B").node
    return f"/admin/registry/node/{node.pk}/change/"


def _dispute_page(market) -> str:
    return f"/admin/registry/dispute/{market.dispute.pk}/change/"


PAGES: list[tuple[str, Callable[..., str]]] = [
    ("admin-dashboard.png", lambda market: "/admin/"),
    ("admin-node.png", _node_page),
    ("admin-dispute.png", _dispute_page),
    ("admin-nodes.png", lambda market: "/admin/registry/node/"),
    ("admin-jobs.png", lambda market: "/admin/registry/job/"),
]


def _environment(base: Path) -> dict[str, str | None]:
    """Embedded mode (SQLite, in-memory channel layer, eager Celery) in `base`: nothing
    reaches the developer's database, Redis or var/."""
    return {
        "DATABASE_URL": None,
        "REDIS_URL": None,
        "BIM_PRODUCTION": None,
        "BIM_SQLITE_PATH": str(base / "bim.sqlite3"),
        "BIM_VAR_DIR": str(base / "var"),
        "BIM_ARTIFACT_ROOT": str(base / "artifacts"),
        "BIM_REGISTRY_KEY_PATH": str(base / "registry.key"),
        "BIM_SERVE_STATIC": "1",
        "DJANGO_SETTINGS_MODULE": "bim_site.settings",
    }


def _seed() -> dict[str, str]:
    """Migrate and seed; returns each page's path by file name."""
    from django.core.management import call_command

    call_command("migrate", "--noinput", verbosity=0)
    from tests.operator_seed import operator_market

    market = operator_market()
    market.operator.set_password(PASSWORD)
    market.operator.save(update_fields=["password"])
    return {name: path(market) for name, path in PAGES}


def _shoot(url: str, username: str, paths: dict[str, str], out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    saved = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            page = browser.new_context(viewport=VIEWPORT).new_page()
            errors: list[str] = []
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            failed: list[str] = []
            page.on("response", lambda response: failed.append(f"{response.status} {response.url}") if response.status >= 400 else None)
            page.goto(f"{url}/admin/login/?next=/admin/")
            page.fill("#id_username", username)
            page.fill("#id_password", PASSWORD)
            page.click("input[type=submit]")
            page.wait_for_url(f"{url}/admin/")
            for name, path in paths.items():
                response = page.goto(url + path)
                if response is None or response.status != 200:
                    raise RuntimeError(f"{path} answered {response and response.status}")
                target = out / name
                page.screenshot(path=str(target), full_page=True)
                saved.append(target)
            failed = [line for line in failed if not line.endswith("/favicon.ico")]  # none is served
            errors = [e for e in errors if not e.startswith("Failed to load resource")] + failed
            if errors:
                # A CSP violation (an inline script) or a missing stylesheet shows up here.
                raise RuntimeError(f"console errors: {errors}")
        finally:
            browser.close()
    return saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where the PNGs go (default docs/)")
    parser.add_argument("--only", action="append", help="a file name of PAGES (repeatable)")
    options = parser.parse_args()
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} is missing: run scripts/install_frontend.sh", file=sys.stderr)
        return 1
    unknown = set(options.only or ()) - {name for name, _ in PAGES}
    if unknown:
        parser.error(f"no such page: {', '.join(sorted(unknown))}")

    with tempfile.TemporaryDirectory(prefix="bim-screenshots-") as tmp:
        overrides = _environment(Path(tmp))
        for key, value in overrides.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        import django

        django.setup()
        from bim_site.processes import ProcessGroup, child_env, free_port

        paths = _seed()
        if options.only:
            paths = {name: path for name, path in paths.items() if name in options.only}
        group = ProcessGroup(log_dir=Path(tmp) / "logs", env=child_env(**overrides))
        try:
            url = group.start_registry(free_port())
            options.out.mkdir(parents=True, exist_ok=True)
            for target in _shoot(url, "operator", paths, options.out):
                print(target)
        finally:
            group.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
