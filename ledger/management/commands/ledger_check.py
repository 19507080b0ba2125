from typing import Any

from django.core.management.base import BaseCommand, CommandError

from ledger.checks import ledger_check_record


class Command(BaseCommand):
    help = "Verify the ledger's invariants; exits non-zero on any violation."

    def handle(self, *args: Any, **options: Any) -> None:
        problems = ledger_check_record()  # an operator's run updates /metrics too
        for problem in problems:
            self.stderr.write(problem)
        if problems:
            raise CommandError(f"ledger: {len(problems)} violation(s)")
        self.stdout.write("ledger: balanced, all invariants hold")
