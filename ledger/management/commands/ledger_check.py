from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ledger.checks import ledger_violations


class Command(BaseCommand):
    help = "Verify the ledger's invariants; exits non-zero on any violation."

    def handle(self, *args: Any, **options: Any) -> None:
        problems = ledger_violations()
        for problem in problems:
            self.stderr.write(problem)
        if problems:
            raise CommandError(f"ledger: {len(problems)} violation(s)")
        self.stdout.write("ledger: balanced, all invariants hold")
