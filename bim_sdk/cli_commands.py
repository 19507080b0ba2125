"""What each `bim` command does, once bim_sdk/cli.py has parsed its arguments: a command
takes them and returns what it prints. A command whose job the registry refuses for
unacknowledged data-handling terms asks for them and runs again (`run_with_data_terms`)."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from tqdm import tqdm

from bim_core import protocol

from .cli_errors import EXIT_RECEIPT_INVALID, EXIT_REFUSED, CliError
from .client import Client, DataTermsNotAcknowledged
from .config import ConfigUnreadable, config_load, config_path, config_remove, config_save
from .receipts import ReceiptInvalid, verify_receipt
from .results import TextDelta


def run_with_data_terms(args: argparse.Namespace) -> Any:
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


def login(args: argparse.Namespace) -> Output:
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


def logout(args: argparse.Namespace) -> Output:
    path = config_path()
    removed = config_remove(path)
    text = f"logged out: removed {path}" if removed else f"not logged in (no {path})"
    return {"logged_out": removed, "config": str(path)}, text


def embed(args: argparse.Namespace) -> Output:
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


def generate(args: argparse.Namespace) -> Output:
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


def upscale(args: argparse.Namespace) -> Output:
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


def job(args: argparse.Namespace) -> Output:
    job = _client(args).job(args.job_id)
    lines = [f"{key}: {job.get(key)}" for key in ("id", "subnet", "state", "price_micro", "created_at", "finished_at")]
    if job.get("failure_reason"):
        lines.append(f"failure_reason: {job['failure_reason']}")
    return job, "\n".join(lines)


def jobs(args: argparse.Namespace) -> Output:
    page = _client(args).jobs(limit=args.limit)
    lines = [
        f"{job['id']}  {job['state']:<12} {job['subnet']:<20} {job['created_at']}"
        + (f"  ({job['failure_reason']})" if job.get("failure_reason") else "")
        for job in page["results"]
    ]
    return page, "\n".join(lines) or "no jobs yet"


def cancel(args: argparse.Namespace) -> Output:
    job = _client(args).cancel(args.job_id)
    return job, f"{job['id']}: {job['state']} ({job.get('failure_reason')})"


def subnets(args: argparse.Namespace) -> Output:
    rows = _client(args).subnets()
    lines = [
        f"{row['slug']:<22} {row['task_type']:<10} nodes {row['nodes_routable']}/{row['nodes_online']} ready/online, "
        f"{row['jobs_waiting']} waiting"
        + (f", ~{row['wait_estimate_s']} s a job" if row.get("wait_estimate_s") is not None else "")
        for row in rows
    ]
    return rows, "\n".join(lines) or "no active subnet"


def terms(args: argparse.Namespace) -> Output:
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


def balance(args: argparse.Namespace) -> Output:
    balance = _client(args).balance()
    return balance, "\n".join(f"{key}: {value}" for key, value in balance.items())


def receipt_verify(args: argparse.Namespace) -> Output:
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
