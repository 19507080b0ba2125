"""How `bim` fails: its exit statuses and the error that carries one to `bim_sdk.cli.main`."""

from __future__ import annotations

# Exit statuses (docs/developers.md keeps the table): argparse exits 2 for usage errors itself.
EXIT_REFUSED = 1  # the registry refused the request, or the job ended unsettled
EXIT_UNREACHABLE = 3  # no answer from the registry, or the job did not finish in time
EXIT_RECEIPT_INVALID = 4
EXIT_AUTH = 5  # the registry refused the key (401): log in again


class CliError(Exception):
    """An error the command line reports as it is and exits with `exit_code`."""

    def __init__(self, exit_code: int, code: str, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.exit_code = exit_code
        self.code = code
        self.detail = detail
        self.status = status
