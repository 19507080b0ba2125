"""Write approved, not yet batched withdrawals as one settlement batch: net payout lines
(`node_id,owner,destination,amount`) and the SHA-256 Merkle root over them, for optional anchoring."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ledger.withdrawals import settlement_batch_create


class Command(BaseCommand):
    help = "Batch approved withdrawals into net payout lines with a Merkle root."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", type=Path, help="write the lines here (default: stdout)")

    def handle(self, *args: Any, **options: Any) -> None:
        batch = settlement_batch_create()
        if batch is None:
            self.stdout.write("no approved withdrawals to batch")
            return
        if options["out"]:
            options["out"].write_text(batch.lines)
        else:
            self.stdout.write(batch.lines, ending="")
        summary = {"batch": batch.pk, "lines": batch.line_count, "total_micro": batch.total, "merkle_root": batch.merkle_root}
        self.stderr.write(json.dumps(summary))
