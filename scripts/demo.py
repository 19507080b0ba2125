"""`make demo`: a whole BIM market on one machine.

Starts the registry (embedded default: SQLite, in-memory channel layer, eager Celery; or
PostgreSQL + Redis + a Celery worker when DATABASE_URL and REDIS_URL are set), three
headless contributor nodes of three different owners (and two image nodes and two text
nodes), submits batches of real texts, a few photo crops to upscale and a few prompts to
SmolLM2 (its tokens streamed as they are generated) through the SDK, verifies every receipt, prints
them with the balances, and ends with one
machine-readable line `demo summary: {...}`. Exits non-zero if anything does not add up.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bim_sdk import BimError, Client, TextDelta, verify_receipt  # noqa: E402
from bim_site.processes import ProcessGroup, child_env, free_port  # noqa: E402

SUBNET = "minilm-embed"
JOBS = int(os.environ.get("BIM_DEMO_JOBS", "12"))
TEXTS_PER_JOB = 7
IMAGE_JOBS = int(os.environ.get("BIM_DEMO_IMAGE_JOBS", "4"))
TEXT_PROMPTS = [
    ("Give me a one-sentence greeting.", 32),
    ("What is 2 + 2?", 24),
    ("Write a short poem about the sea.", 40),
][: int(os.environ.get("BIM_DEMO_TEXT_JOBS", "3"))]
STATE = Path(os.environ.get("BIM_DEMO_DIR", ROOT / "var" / "demo"))


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True, text=True
    )
    return done.stdout


def main() -> int:
    shutil.rmtree(STATE, ignore_errors=True)
    STATE.mkdir(parents=True)
    embedded = not os.environ.get("DATABASE_URL") and not os.environ.get("REDIS_URL")
    env = child_env(BIM_VAR_DIR=str(STATE), DJANGO_SETTINGS_MODULE="bim_site.settings", BIM_NODE_HEARTBEAT_S="2")
    print(f"demo: registry on {'the embedded default (SQLite, in-memory layer, eager Celery)' if embedded else 'PostgreSQL + Redis'}")
    manage(env, "migrate", "--noinput", "-v0")
    seed = json.loads(manage(env, "bim_seed", "--demo", "--json"))

    group = ProcessGroup(log_dir=STATE / "logs", env=env)
    try:
        url = group.start_registry(free_port())
        if not embedded:
            group.start_worker()
        for name, account in seed["contributors"].items():
            group.start_node(f"{name}-node", registry=url, token=account["token"], subnet=SUBNET, state_dir=STATE / "nodes")
        # Two image nodes of two owners: the image subnet's jobs need a pair too.
        image_owners = list(seed["contributors"].items())[:2]
        for name, account in image_owners:
            group.start_node(f"{name}-image", registry=url, token=account["token"], subnet=seed["image_subnet"], state_dir=STATE / "nodes")
        # Two text nodes of two other owners' pair: SmolLM2 under llama.cpp, one core each.
        text_owners = list(seed["contributors"].items())[-2:]
        for name, account in text_owners:
            group.start_node(f"{name}-text", registry=url, token=account["token"], subnet=seed["text_subnet"], state_dir=STATE / "nodes")
        print(f"demo: registry {url}  admin {url}/admin/ ({seed['admin']['username']} / {seed['admin']['password']})")
        print(f"demo: API docs {url}/api/docs/  metrics {url}/metrics  nodes: {', '.join(seed['contributors'])}")
        wait_for_nodes(len(seed["contributors"]) + len(image_owners) + len(text_owners), group)
        summary = run_jobs(url, seed, group)
    finally:
        group.stop()
    print("demo summary: " + json.dumps(summary, sort_keys=True))
    ok = summary["settled"] >= min(10, JOBS) and summary["ledger_balanced"] and summary["receipts_verified"] == summary["settled"]
    ok = ok and summary["image_settled"] == summary["image_submitted"]
    ok = ok and summary["text_settled"] == summary["text_submitted"]
    return 0 if ok else 1


def run_jobs(url: str, seed: dict, group: ProcessGroup) -> dict:
    client = Client(url, seed["user"]["token"], timeout=30)
    texts = [line for line in (ROOT / "scripts" / "demo_texts.txt").read_text().splitlines() if line.strip()]
    batches = [list(itertools.islice(itertools.cycle(texts), i * TEXTS_PER_JOB, (i + 1) * TEXTS_PER_JOB)) for i in range(JOBS)]
    before = client.balance()
    started = time.monotonic()
    submitted = [(client.submit_embeddings(SUBNET, batch, idempotency_key=f"demo-{i}"), batch) for i, batch in enumerate(batches)]
    print(f"demo: submitted {len(submitted)} jobs of {TEXTS_PER_JOB} texts; waiting for two nodes to agree on each")
    settled, pairs, cosines, verified = 0, set(), [], 0
    names = node_names()
    for job, batch in submitted:
        group.check_alive()
        final = client.wait(job["id"], timeout=180)
        if final["state"] != "settled":
            print(f"  job {final['id'][:8]} {final['state']}: {final['failure_reason']}")
            continue
        settled += 1
        vectors = verify_receipt(final, registry_key=client.registry_key(), inputs={"texts": batch})
        verified += 1
        receipt = final["receipt"]
        node_ids = [n["node_id"] for n in receipt["nodes"]]
        pairs.add(frozenset(node_ids))
        cosine = receipt["verification"]["min_cosine"]
        cosines.append(cosine)
        who = " + ".join(f"{n['role']}={names.get(n['node_id'], n['node_id'][:8])}" for n in receipt["nodes"])
        paid = ", ".join(f"{t['kind']} {t['amount']}" for t in receipt["settlement"]["transfers"] if t["kind"] == "payout")
        print(
            f"  job {final['id'][:8]} settled  {who}  min cosine {cosine:.9f} (tau {receipt['verification']['cosine_min']})"
            f"  {vectors.shape[0]}x{vectors.shape[1]}  price {final['price_micro']}  payouts [{paid}]  receipt verified"
        )
    images = run_image_jobs(client, seed, group, names)
    texts = run_text_jobs(client, seed, group, names)
    elapsed = time.monotonic() - started
    balances = ledger_balances(seed)
    after = client.balance()
    spent = before["credits_micro"] - after["credits_micro"] - after["held_micro"]
    received = balances["nodes_total"] + balances["registry_revenue"]
    print(f"demo: {settled}/{len(submitted)} settled in {elapsed:.1f} s")
    print(f"demo: user spent {spent} micro-credits ({after['credits_micro']} left, {after['held_micro']} held)")
    for name, row in balances["nodes"].items():
        print(f"demo: {name:<8} earnings {row['earnings']:>8}  escrow {row['escrow']:>8}")
    print(f"demo: registry revenue {balances['registry_revenue']}; nodes + registry received {received}")
    print(f"demo: ledger_check: {'balanced' if balances['ledger_ok'] else 'VIOLATIONS ' + str(balances['problems'])}")
    return {
        "settled": settled,
        "submitted": len(submitted),
        "distinct_node_pairs": len(pairs),
        "min_cosine": min(cosines) if cosines else None,
        "receipts_verified": verified,
        "user_spent_micro": spent,
        "nodes_received_micro": balances["nodes_total"],
        "registry_received_micro": balances["registry_revenue"],
        "ledger_balanced": balances["ledger_ok"] and spent == received,
        "seconds": round(elapsed, 2),
        **images,
        **texts,
    }


def run_image_jobs(client: Client, seed: dict, group: ProcessGroup, names: dict[str, str]) -> dict:
    """2x super-resolution of 128x128 crops of bundled photos (waifu2x UpConv7, ~0.1 s per
    node on one core), each settled by two nodes whose images agree to SSIM >= tau."""
    from skimage import data

    from bim_core.png import png_encode
    from bim_core.protocol import b64encode

    photos = ["astronaut", "chelsea", "coffee", "rocket"]
    submitted = []
    for i in range(IMAGE_JOBS):
        crop = getattr(data, photos[i % len(photos)])()[60 + 20 * i : 188 + 20 * i, 100:228]
        inputs = {"image": b64encode(png_encode(crop))}
        submitted.append((client.submit(seed["image_subnet"], inputs, idempotency_key=f"demo-image-{i}"), inputs))
    print(f"demo: submitted {len(submitted)} image jobs (128x128 -> 256x256) to {seed['image_subnet']}")
    settled, ssims = 0, []
    for job, inputs in submitted:
        group.check_alive()
        final = client.wait(job["id"], timeout=180)
        if final["state"] != "settled":
            print(f"  image job {final['id'][:8]} {final['state']}: {final['failure_reason']}")
            continue
        pixels = verify_receipt(final, registry_key=client.registry_key(), inputs=inputs)
        settled += 1
        verification = final["receipt"]["verification"]
        ssims.append(verification["worst"])
        who = " + ".join(f"{n['role']}={names.get(n['node_id'], n['node_id'][:8])}" for n in final["receipt"]["nodes"])
        print(
            f"  image job {final['id'][:8]} settled  {who}  SSIM {verification['worst']:.9f}"
            f" (tau {verification['tolerances']['ssim_min']})  {pixels.shape[1]}x{pixels.shape[0]}"
            f"  price {final['price_micro']}  receipt verified"
        )
    return {"image_settled": settled, "image_submitted": len(submitted), "min_ssim": min(ssims) if ssims else None}


def run_text_jobs(client: Client, seed: dict, group: ProcessGroup, names: dict[str, str]) -> dict:
    """SmolLM2 text generation, greedy: the tokens stream to the terminal as a node
    generates them (unverified), then the text two nodes agreed on arrives with its
    receipt. The hold covers max_tokens; the user pays for the tokens generated."""
    subnet = seed["text_subnet"]
    settled, tokens_total = 0, 0
    print(f"demo: {len(TEXT_PROMPTS)} text jobs on {subnet}, streamed as the nodes generate")
    for i, (prompt, max_tokens) in enumerate(TEXT_PROMPTS):
        group.check_alive()
        print(f"  prompt {prompt!r} (max {max_tokens} tokens)\n    streaming: ", end="", flush=True)
        result = None
        try:
            for event in client.generate(subnet, prompt, max_tokens, stream=True, timeout=180, idempotency_key=f"demo-text-{i}"):
                if isinstance(event, TextDelta):
                    print(event.text.replace("\n", " "), end="", flush=True)
                else:
                    result = event
        except BimError as exc:
            print(f"\n  text job failed: {exc}")
            continue
        assert result is not None
        settled += 1
        tokens_total += len(result.tokens)
        receipt = result.receipt
        who = " + ".join(f"{n['role']}={names.get(n['node_id'], n['node_id'][:8])}" for n in receipt["nodes"])
        print(f"\n    verified:  {result.text!r}")
        print(
            f"  text job {result.job['id'][:8]} settled  {who}  {receipt['verification']['path']}  {len(result.tokens)} tokens"
            f" ({result.finish})  held {result.job['price_micro']}  paid {receipt['settlement']['price_micro']}  receipt verified"
        )
    return {"text_settled": settled, "text_submitted": len(TEXT_PROMPTS), "text_tokens": tokens_total}


def _django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bim_site.settings")
    os.environ["BIM_VAR_DIR"] = str(STATE)
    import django

    django.setup()


def wait_for_nodes(count: int, group: ProcessGroup, timeout: float = 180.0) -> None:
    """Until every node has fetched, verified and loaded the model, said it is ready and
    passed the registry's benchmark."""
    _django()
    from registry.models import NodeSubnet

    deadline = time.monotonic() + timeout
    while (ready := NodeSubnet.objects.filter(ready_at__isnull=False, score__gt=0).count()) < count:
        group.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {ready} of {count} nodes ready after {timeout} s")
        time.sleep(0.2)
    print(f"demo: {count} nodes downloaded, verified and loaded the model and passed the benchmark:")
    for link in NodeSubnet.objects.select_related("node").order_by("node__name"):
        print(
            f"  {link.node.name:<11} {link.node.ip_block:<14} {link.items_per_s:6.1f} items/s"
            f"  p50 {link.latency_p50_ms:6.1f} ms  p95 {link.latency_p95_ms:6.1f} ms  score {link.score:.3f}"
        )


def node_names() -> dict[str, str]:
    _django()
    from registry.models import Node

    return {str(pk): name for pk, name in Node.objects.values_list("pk", "name")}


def ledger_balances(seed: dict) -> dict:
    _django()
    from ledger.accounts import account_balance
    from ledger.checks import ledger_violations
    from ledger.models import Account, AccountKind
    from ledger.selectors import balance_totals
    from registry.models import Node

    nodes: dict[str, dict[str, int]] = {}
    for name in seed["contributors"]:
        totals = balance_totals(node_ids=Node.objects.filter(owner__username=name).values_list("pk", flat=True))
        nodes[name] = {"earnings": totals["earnings_micro"], "escrow": totals["escrow_micro"]}
    registry = Account.objects.filter(kind=AccountKind.REGISTRY_REVENUE).first()
    problems = ledger_violations()
    return {
        "nodes": nodes,
        "nodes_total": sum(r["earnings"] + r["escrow"] for r in nodes.values()),
        "registry_revenue": account_balance(registry) if registry else 0,
        "ledger_ok": not problems,
        "problems": problems,
    }


if __name__ == "__main__":
    sys.exit(main())
