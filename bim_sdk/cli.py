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
import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import requests
from tqdm import tqdm

from bim_core import protocol

from .client import DEFAULT_BATCH_SIZE, BimError, Client, DataTermsNotAcknowledged
from .config import ConfigUnreadable, config_load, config_path, config_remove, config_save, credentials_resolve
from .receipts import ReceiptInvalid, verify_receipt
from .results import TextDelta

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
    login.set_defaults(run=_login, talks_to_registry=False)

    logout = commands.add_parser("logout", parents=[output], help="forget the stored URL and API key")
    logout.set_defaults(run=_logout, talks_to_registry=False)

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
    embed.set_defaults(run=_embed)

    generate = commands.add_parser(
        "generate", parents=[submits], help="generate text: streamed to stderr, the verified text on stdout"
    )
    generate.add_argument("subnet", metavar="SUBNET")
    generate.add_argument("prompt", metavar="PROMPT")
    generate.add_argument("--max-tokens", type=int, default=64, help="default 64")
    generate.set_defaults(run=_generate)

    upscale = commands.add_parser("upscale", parents=[submits], help="upscale an image 2x on an image subnet")
    upscale.add_argument("subnet", metavar="SUBNET")
    upscale.add_argument("source", type=Path, metavar="IN.png")
    upscale.add_argument("target", type=Path, metavar="OUT.png")
    upscale.set_defaults(run=_upscale)

    job = commands.add_parser("job", parents=[api], help="show a job")
    job.add_argument("job_id", metavar="JOB_ID")
    job.set_defaults(run=_job)

    jobs = commands.add_parser("jobs", parents=[api], help="list your jobs, newest first")
    jobs.add_argument("--limit", type=int, default=20, help="default 20")
    jobs.set_defaults(run=_jobs)

    cancel = commands.add_parser("cancel", parents=[api], help="cancel a queued job (its hold is released)")
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.set_defaults(run=_cancel)

    subnets = commands.add_parser("subnets", parents=[api], help="list the subnets with nodes online and waits")
    subnets.set_defaults(run=_subnets)

    terms = commands.add_parser(
        "terms", parents=[api], help="a subnet's data-handling terms: what contributors see of your jobs"
    )
    terms.add_argument("subnet", metavar="SUBNET")
    action = terms.add_mutually_exclusive_group()
    action.add_argument("--acknowledge", action="store_true", help="acknowledge the terms shown (their current version)")
    action.add_argument("--withdraw", action="store_true", help="withdraw: your next job on the subnet is refused")
    terms.set_defaults(run=_terms)

    balance = commands.add_parser("balance", parents=[api], help="show your balances (micro-credits)")
    balance.set_defaults(run=_balance)

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
    verify.set_defaults(run=_receipt_verify, talks_to_registry=False)


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
        output = _run_with_data_terms(args)
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


def _run_with_data_terms(args: argparse.Namespace) -> Any:
    """Run the command; if the registry refuses its job because the subnet's data-handling
    terms were not acknowledged, show them and ask once (or take --yes), acknowledge them
    through the API, which remembers, and run it again. Nothing was submitted or held."""
    try:
        return args.run(args)
    except DataTermsNotAcknowledged as exc:
        if not hasattr(args, "yes"):
            raise
        _data_terms_consent(args, exc)
    return args.run(args)


def _data_terms_consent(args: argparse.Namespace, refusal: DataTermsNotAcknowledged) -> None:
    client = _client(args)
    terms = client.data_terms(refusal.subnet)
    terms["acknowledge_url"] = client.http.url(terms["acknowledge_url"])
    if not args.yes:
        if not sys.stdin.isatty():
            raise CliError(
                EXIT_REFUSED,
                refusal.code,
                f"{refusal.detail}. Read them with `bim terms {refusal.subnet}`, then acknowledge with "
                f"`bim terms {refusal.subnet} --acknowledge`, or pass --yes",
                refusal.status,
            )
        print(_terms_text(terms), file=sys.stderr)
        # The question goes to stderr with the terms: stdout is for results (--json).
        print(f"Acknowledge these terms (version {terms['version']}) and submit? [y/N] ", end="", file=sys.stderr, flush=True)
        answer = input()
        if answer.strip().lower() not in ("y", "yes"):
            raise CliError(EXIT_REFUSED, refusal.code, "not acknowledged: nothing was submitted", refusal.status)
    client.acknowledge_data_terms(refusal.subnet, terms["version"])
    print(f"bim: acknowledged the data-handling terms of {refusal.subnet} (version {terms['version']})", file=sys.stderr)


def _terms_text(terms: dict[str, Any]) -> str:
    return (
        f"Data-handling terms of {terms['subnet']}, version {terms['version']}: {terms['summary']}.\n\n"
        f"{terms['text']}\n\n(also at {terms['acknowledge_url']})"
    )


def _fail(args: argparse.Namespace, error: CliError) -> int:
    if args.json:
        print(json.dumps({"error": {"code": error.code, "detail": error.detail, "status": error.status}}))
    else:
        status = f"HTTP {error.status} " if error.status else ""
        print(f"bim: {status}{error.code}: {error.detail}", file=sys.stderr)
        if error.exit_code == EXIT_AUTH:
            print("bim: check the key, or log in again: bim login", file=sys.stderr)
    return error.exit_code


# Each command returns (what --json prints, what is printed otherwise).
Output = tuple[Any, str]


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.token)


def _progress(args: argparse.Namespace, *, total: int, unit: str) -> tqdm:
    """A bar on stderr while jobs run: only for someone watching (stderr is a terminal) and
    never with --json, so what scripts read (stdout, and stderr when it is a file) stays
    clean. It clears itself when done (leave=False): the results follow on stdout."""
    return tqdm(
        total=total,
        unit=f" {unit}",
        file=sys.stderr,
        disable=args.json or not sys.stderr.isatty(),
        leave=False,
        dynamic_ncols=True,
    )


def _login(args: argparse.Namespace) -> Output:
    path = config_path()
    try:
        stored = config_load(path)
    except ConfigUnreadable:
        stored = {}  # logging in again is how a broken file is replaced
    args.url = args.url or os.environ.get("BIM_URL") or stored.get("url")
    if not args.url:
        _usage_error("give the registry's URL: bim login --url URL (or $BIM_URL)")
    key = (args.key or _key_from_stdin_or_prompt()).strip()
    if not key:
        _usage_error("no API key given (create one on the registry's /developer/ page)")
    # An authenticated read: a refused key raises (401: EXIT_AUTH) before anything is written.
    Client(args.url, key).balance()
    config_save(path, url=args.url, token=key)
    return {"url": args.url, "config": str(path)}, f"logged in to {args.url}; the key is stored in {path}"


def _key_from_stdin_or_prompt() -> str:
    if not sys.stdin.isatty():  # piped: `pass show bim | bim login`
        return sys.stdin.readline()
    return getpass.getpass("API key (from the registry's /developer/ page): ")


def _logout(args: argparse.Namespace) -> Output:
    path = config_path()
    removed = config_remove(path)
    text = f"logged out: removed {path}" if removed else f"not logged in (no {path})"
    return {"logged_out": removed, "config": str(path)}, text


def _embed(args: argparse.Namespace) -> Output:
    texts = list(args.texts)
    for path in args.files:
        texts += [line for line in _read(path, "the texts", Path.read_text).splitlines() if line.strip()]
    if not texts:
        raise CliError(2, "no_texts", "give texts as arguments or --file TEXTS.txt")
    if args.batch_size < 1:
        _usage_error("--batch-size must be at least 1")
    results = []
    with _progress(args, total=len(texts), unit="texts") as bar:
        client = _client(args)
        if args.p2p:  # one job at a time, each bringing its texts to its nodes itself
            batches = [texts[i : i + args.batch_size] for i in range(0, len(texts), args.batch_size)]
            jobs = (client.embed(args.subnet, batch, timeout=args.timeout, transport="p2p") for batch in batches)
        else:
            jobs = client.embed_many(
                args.subnet,
                texts,
                batch_size=args.batch_size,
                timeout=args.timeout,
                on_poll=lambda job: bar.set_postfix_str(f"job {len(results) + 1}: {job['state']}"),
            )
        for result in jobs:
            results.append(result)
            bar.update(len(result.vectors))
            bar.set_postfix_str(f"job {len(results)}: settled")  # redraws now: update() may wait for mininterval
    lines = []
    for result, start in zip(results, range(0, len(texts), args.batch_size), strict=True):
        lines.append(_settled_line(result.job))
        lines += [
            f"{text[:40]!r}: [{', '.join(f'{v:.4f}' for v in vector[:4])}, ...] ({len(vector)} dims)"
            for text, vector in zip(texts[start : start + len(result.vectors)], result.vectors, strict=True)
        ]
    # One job prints as `bim job ID --json` does (what `bim verify` reads); several, a list of them.
    data = results[0].job if len(results) == 1 else [result.job for result in results]
    return data, "\n".join(lines)


def _generate(args: argparse.Namespace) -> Output:
    events = _client(args).generate(
        args.subnet, args.prompt, args.max_tokens, stream=True, timeout=args.timeout, transport=_transport(args)
    )
    for event in events:
        if isinstance(event, TextDelta):
            if not args.json:  # the unverified preview, as the node streams it
                print(event.text, end="", file=sys.stderr, flush=True)
            continue
        if not args.json:
            print(file=sys.stderr)
        return event.job, event.text
    raise AssertionError("unreachable: a generation ends with its verified result")


def _upscale(args: argparse.Namespace) -> Output:
    png = _read(args.source, "the image", Path.read_bytes)
    with _progress(args, total=1, unit="image") as bar:
        result = _client(args).upscale(
            args.subnet, png, timeout=args.timeout, on_poll=lambda job: bar.set_postfix_str(job["state"]),
            transport=_transport(args),
        )
        bar.update(1)
        bar.set_postfix_str("settled")
    args.target.write_bytes(result.png)
    height, width = result.pixels.shape[:2]
    return result.job, f"{_settled_line(result.job)}\nwrote {args.target} ({width}x{height})"


def _transport(args: argparse.Namespace) -> str:
    return "p2p" if args.p2p else "relay"


def _job(args: argparse.Namespace) -> Output:
    job = _client(args).job(args.job_id)
    lines = [f"{key}: {job.get(key)}" for key in ("id", "subnet", "state", "price_micro", "created_at", "finished_at")]
    if job.get("failure_reason"):
        lines.append(f"failure_reason: {job['failure_reason']}")
    return job, "\n".join(lines)


def _jobs(args: argparse.Namespace) -> Output:
    page = _client(args).jobs(limit=args.limit)
    lines = [
        f"{job['id']}  {job['state']:<12} {job['subnet']:<20} {job['created_at']}"
        + (f"  ({job['failure_reason']})" if job.get("failure_reason") else "")
        for job in page["results"]
    ]
    return page, "\n".join(lines) or "no jobs yet"


def _cancel(args: argparse.Namespace) -> Output:
    job = _client(args).cancel(args.job_id)
    return job, f"{job['id']}: {job['state']} ({job.get('failure_reason')})"


def _subnets(args: argparse.Namespace) -> Output:
    rows = _client(args).subnets()
    lines = [
        f"{row['slug']:<22} {row['task_type']:<10} nodes {row['nodes_routable']}/{row['nodes_online']} ready/online, "
        f"{row['jobs_waiting']} waiting"
        + (f", ~{row['wait_estimate_s']} s a job" if row.get("wait_estimate_s") is not None else "")
        for row in rows
    ]
    return rows, "\n".join(lines) or "no active subnet"


def _terms(args: argparse.Namespace) -> Output:
    client = _client(args)
    terms = client.data_terms(args.subnet)
    if args.acknowledge:
        terms = client.acknowledge_data_terms(args.subnet, terms["version"])
    elif args.withdraw:
        terms = client.withdraw_data_terms(args.subnet)
    terms["acknowledge_url"] = client.http.url(terms["acknowledge_url"])
    state = (
        f"you acknowledged version {terms['version']} at {terms['acknowledged_at']}"
        if terms["acknowledged_at"]
        else "not acknowledged: your jobs on this subnet are refused (bim terms SUBNET --acknowledge)"
    )
    return terms, f"{_terms_text(terms)}\n{state}"


def _balance(args: argparse.Namespace) -> Output:
    balance = _client(args).balance()
    return balance, "\n".join(f"{key}: {value}" for key, value in balance.items())


def _receipt_verify(args: argparse.Namespace) -> Output:
    job = _read(args.file, "the job", _read_json)
    inputs = _read(args.inputs, "the inputs", _read_json) if args.inputs else None
    if not isinstance(job, dict):
        raise CliError(EXIT_RECEIPT_INVALID, "receipt_invalid", f"{args.file} holds no job object")
    named_key = (job.get("receipt") or {}).get("registry_key")
    registry_key = args.registry_key or named_key
    try:
        verify_receipt(job, registry_key=str(registry_key), inputs=inputs)
    except (KeyError, TypeError, ValueError, protocol.ProtocolError) as exc:
        # A file that is not a job as the API returns it does not verify either.
        raise ReceiptInvalid(f"malformed job or receipt: {type(exc).__name__}: {exc}") from None
    receipt = job["receipt"]
    checked = {
        "valid": True,
        "job_id": receipt.get("job_id"),
        "result_hash": receipt.get("result_hash"),
        "path": receipt["verification"]["path"],
        "trusted": bool(receipt.get("trusted", False)),
        "nodes": [node["node_id"] for node in receipt["nodes"]],
        "registry_key": registry_key,
        "registry_key_given": bool(args.registry_key),
        "inputs_checked": inputs is not None,
    }
    lines = [
        f"receipt valid: job {checked['job_id']}, result {checked['result_hash']}",
        f"verified by {checked['path']} on {len(checked['nodes'])} node(s); signed by registry key {registry_key}",
    ]
    if checked["trusted"]:
        lines.append("ran on a trusted subnet: registry-operated nodes only")
    if not args.registry_key:
        lines.append("note: checked against the key the receipt names; pass --registry-key to pin the registry's")
    return checked, "\n".join(lines)


def _settled_line(job: dict[str, Any]) -> str:
    return f"job {job['id']} settled on {job['subnet']}, {job['price_micro']} micro-credits, receipt verified"


def _read(path: Path, what: str, reader: Callable[[Path], Any]) -> Any:
    try:
        return reader(path)
    except OSError as exc:
        _usage_error(f"cannot read {what} {path}: {exc.strerror}")
    except ValueError as exc:
        _usage_error(f"{path} is not JSON: {exc}")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def _usage_error(message: str) -> NoReturn:
    print(f"bim: {message}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    sys.exit(main())
