"""`bim`: the SDK on the command line. Every result it prints was verified against its receipt.

    bim login [--url URL] [--key KEY]     (the key from --key, stdin, or a hidden prompt)
    bim logout
    bim embed SUBNET [TEXT...] [--file TEXTS.txt...] [--batch-size N] [--p2p]
    bim generate SUBNET PROMPT [--max-tokens N] [--p2p]
    bim upscale SUBNET IN.png OUT.png [--p2p]
    bim job JOB_ID
    bim jobs [--limit N]
    bim cancel JOB_ID
    bim subnets
    bim terms SUBNET [--acknowledge | --withdraw]
    bim balance
    bim verify FILE.json [--registry-key KEY] [--inputs INPUTS.json]   (also `bim receipt verify`)

Commands that call the registry take --url and --token, else $BIM_URL and $BIM_TOKEN, else
what `bim login` stored (its key only for its URL). With --json a command prints JSON on
stdout: the job as the API returned it for embed (a list when the texts took several jobs),
generate, upscale and job (so `bim verify` can check it later), and errors as {"error": {...}}.
Contributors see the inputs and outputs of your jobs: before your first job on a subnet,
embed, generate and upscale show its data-handling terms and ask once (y/N) to acknowledge
them; --yes acknowledges without asking (scripts), and `bim terms` reads or acknowledges them.
Without --json, a progress bar is drawn on stderr while jobs run, when stderr is a terminal.
Exit status: 0 done, 1 refused by the registry or the job failed, 2 usage, 3 no answer
(unreachable, or the job did not finish in time), 4 receipt invalid, 5 the key was refused
(HTTP 401: log in again).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import requests

from . import cli_commands
from .cli_errors import EXIT_AUTH, EXIT_RECEIPT_INVALID, EXIT_REFUSED, EXIT_UNREACHABLE, CliError
from .client import DEFAULT_BATCH_SIZE, BimError
from .config import ConfigUnreadable, config_load, config_path, credentials_resolve
from .receipts import ReceiptInvalid


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bim",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Options go after the command (`bim job ID --json`): each command takes those it uses.
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="print JSON on stdout, errors included")
    api = argparse.ArgumentParser(add_help=False, parents=[output])
    api.add_argument("--url", help="registry URL (default: $BIM_URL, else `bim login`'s)")
    api.add_argument("--token", help="API key or token (default: $BIM_TOKEN, else `bim login`'s)")
    api.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for a job (default 120)")
    submits = argparse.ArgumentParser(add_help=False, parents=[api])
    submits.add_argument(
        "--yes",
        action="store_true",
        help="acknowledge the subnet's data-handling terms without asking, if not yet (contributors see your jobs)",
    )
    submits.add_argument(
        "--p2p",
        action="store_true",
        help="send the input to the nodes over WebRTC, not through the registry (docs/p2p.md); "
        "falls back to the registry if no channel opens",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    login = commands.add_parser(
        "login", parents=[output], help="check an API key against the registry and store it with its URL"
    )
    login.add_argument("--url", help="registry URL (default: $BIM_URL, else the one stored)")
    login.add_argument(
        "--key", help="the API key (bim_…); without it, read from stdin when piped, else asked for without echo"
    )
    login.set_defaults(run=cli_commands.login, talks_to_registry=False)

    logout = commands.add_parser("logout", parents=[output], help="forget the stored URL and API key")
    logout.set_defaults(run=cli_commands.logout, talks_to_registry=False)

    embed = commands.add_parser("embed", parents=[submits], help="embed texts on an embedding subnet")
    embed.add_argument("subnet", metavar="SUBNET")
    embed.add_argument("texts", nargs="*", metavar="TEXT")
    embed.add_argument(
        "--file",
        dest="files",
        type=Path,
        nargs="+",
        action="extend",
        default=[],
        metavar="TEXTS.txt",
        help="embed the files' lines (blank ones skipped), after any TEXTs",
    )
    embed.add_argument(
        "--batch-size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"texts per job (default {DEFAULT_BATCH_SIZE}, a subnet's usual limit); more texts are split into jobs",
    )
    embed.set_defaults(run=cli_commands.embed)

    generate = commands.add_parser(
        "generate", parents=[submits], help="generate text: streamed to stderr, the verified text on stdout"
    )
    generate.add_argument("subnet", metavar="SUBNET")
    generate.add_argument("prompt", metavar="PROMPT")
    generate.add_argument("--max-tokens", type=int, default=64, help="default 64")
    generate.set_defaults(run=cli_commands.generate)

    upscale = commands.add_parser("upscale", parents=[submits], help="upscale an image 2x on an image subnet")
    upscale.add_argument("subnet", metavar="SUBNET")
    upscale.add_argument("source", type=Path, metavar="IN.png")
    upscale.add_argument("target", type=Path, metavar="OUT.png")
    upscale.set_defaults(run=cli_commands.upscale)

    job = commands.add_parser("job", parents=[api], help="show a job")
    job.add_argument("job_id", metavar="JOB_ID")
    job.set_defaults(run=cli_commands.job)

    jobs = commands.add_parser("jobs", parents=[api], help="list your jobs, newest first")
    jobs.add_argument("--limit", type=int, default=20, help="default 20")
    jobs.set_defaults(run=cli_commands.jobs)

    cancel = commands.add_parser("cancel", parents=[api], help="cancel a queued job (its hold is released)")
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.set_defaults(run=cli_commands.cancel)

    subnets = commands.add_parser("subnets", parents=[api], help="list the subnets with nodes online and waits")
    subnets.set_defaults(run=cli_commands.subnets)

    terms = commands.add_parser(
        "terms", parents=[api], help="a subnet's data-handling terms: what contributors see of your jobs"
    )
    terms.add_argument("subnet", metavar="SUBNET")
    action = terms.add_mutually_exclusive_group()
    action.add_argument("--acknowledge", action="store_true", help="acknowledge the terms shown (their current version)")
    action.add_argument("--withdraw", action="store_true", help="withdraw: your next job on the subnet is refused")
    terms.set_defaults(run=cli_commands.terms)

    balance = commands.add_parser("balance", parents=[api], help="show your balances (micro-credits)")
    balance.set_defaults(run=cli_commands.balance)

    verify_help = "verify a settled job's receipt offline (the job as `bim job ID --json` prints it)"
    _add_verify_arguments(commands.add_parser("verify", parents=[output], help=verify_help))
    receipt = commands.add_parser("receipt", help="check receipts (`bim receipt verify` is `bim verify`)")
    receipt_commands = receipt.add_subparsers(dest="receipt_command", required=True, metavar="COMMAND")
    _add_verify_arguments(receipt_commands.add_parser("verify", parents=[output], help=verify_help))
    return parser


def _add_verify_arguments(verify: argparse.ArgumentParser) -> None:
    verify.add_argument("file", type=Path, metavar="FILE.json")
    verify.add_argument(
        "--registry-key",
        default=os.environ.get("BIM_REGISTRY_KEY"),
        help="the registry's receipt key, from /api/v1/registry/ (default: $BIM_REGISTRY_KEY; "
        "without one the receipt is checked against the key it names, which proves less)",
    )
    verify.add_argument("--inputs", type=Path, metavar="INPUTS.json", help="also check these were the job's inputs")
    verify.set_defaults(run=cli_commands.receipt_verify, talks_to_registry=False)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "talks_to_registry", True):
        try:
            stored = config_load(config_path())
        except ConfigUnreadable as exc:
            parser.error(str(exc))
        credentials = credentials_resolve(url=args.url, token=args.token, environ=os.environ, stored=stored)
        args.url, args.token = credentials.url, credentials.token
        if not args.url:
            parser.error("no registry URL: run `bim login`, or give --url or $BIM_URL")
        if not args.token:
            parser.error(f"no API key for {args.url}: run `bim login`, or give --token or $BIM_TOKEN")
    try:
        output = cli_commands.run_with_data_terms(args)
    except CliError as exc:
        return _fail(args, exc)
    except BimError as exc:
        exit_code = EXIT_AUTH if exc.status == 401 else EXIT_REFUSED
        return _fail(args, CliError(exit_code, exc.code, exc.detail, exc.status))
    except (requests.ConnectionError, requests.Timeout) as exc:
        # requests' own message is a nested repr; the retries' warnings said what failed.
        return _fail(args, CliError(EXIT_UNREACHABLE, "unreachable", f"no answer from {args.url} ({type(exc).__name__})"))
    except TimeoutError as exc:
        return _fail(args, CliError(EXIT_UNREACHABLE, "timeout", str(exc)))
    except ReceiptInvalid as exc:
        return _fail(args, CliError(EXIT_RECEIPT_INVALID, "receipt_invalid", str(exc)))
    data, text = output
    print(json.dumps(data, indent=2) if args.json else text)
    return 0


def _fail(args: argparse.Namespace, error: CliError) -> int:
    if args.json:
        print(json.dumps({"error": {"code": error.code, "detail": error.detail, "status": error.status}}))
    else:
        status = f"HTTP {error.status} " if error.status else ""
        print(f"bim: {status}{error.code}: {error.detail}", file=sys.stderr)
        if error.exit_code == EXIT_AUTH:
            print("bim: check the key, or log in again: bim login", file=sys.stderr)
    return error.exit_code


if __name__ == "__main__":
    sys.exit(main())
