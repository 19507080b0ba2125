"""Job settlements per second through the ledger, on PostgreSQL.

One settlement is what the registry writes for a paid job: `ledger.services.job_hold`
(user credits -> user hold) and `job_settle` (capture to clearing, payouts to the registry
and the two agreeing nodes, and each node's escrow share), called exactly as the registry
calls them, in one transaction. With the bench's subnet (40/40/20 split, an escrow
requirement no node reaches) that is 7 transfers, 5 updated account balances and one
PendingDelta row (the registry's revenue; clearing nets to zero) per settlement.

Baseline, measured in the same run on the same database and the same accounts: the same
rows written with raw SQL through psycopg, one transaction per settlement: lock the six
user and node accounts (SELECT ... FOR UPDATE in primary-key order, as the ORM path
does), check for overdraft, insert the 7 transfers (same columns, same idempotency
keys), update the changed balances and insert the PendingDelta row: 4 statements
between BEGIN and COMMIT (psycopg prepares them after five uses). ratio = ORM / raw
settlements per second: the cost of the service and of its safety checks (account
look-ups, idempotency and hold-ended look-ups, Transfer objects returned, and two separate
postings, the hold and the settlement, each one call of `bim_ledger_post` that locks and
updates the user's hold account again).

Clients are separate processes, each with its own connections. Variants: 1 client,
8 clients on distinct users (each client settles the jobs of its own users; node pairs
are drawn at random from a shared pool, so node accounts do contend), and 8 clients on
one user (every settlement locks the same user accounts). Each run settles a fixed
count per path (2,000 with several clients, 500 with one); ORM and raw alternate
within a run, and which goes first alternates between runs. After every run the bench checks
`ledger.checks.ledger_violations()` and that exactly the expected transfers and
PendingDelta rows exist for the run's jobs.

stdout gets one JSON object (every run, medians, ratios, targets, machine, statements per
settlement, client and server CPU per settlement, a single-client time breakdown);
progress goes to stderr. The database
(`bim_ledger_bench` on postgres://postgres@127.0.0.1:5432 by default) is dropped and
recreated on each invocation and dropped at the end (unless --keep-db). Run it as

    .venv/bin/python bench/ledger.py [--quick]   (from the repository root)
"""

from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import os
import platform
import queue
import random
import statistics
import sys
import time
import traceback
import uuid
import zlib
from pathlib import Path
from typing import Any

from bim_core.money import split_amount

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
# This file is bench/ledger.py: with bench/ on sys.path, `import ledger` would import it
# instead of the ledger app.
sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != BENCH_DIR]
sys.path.insert(0, str(ROOT))

TARGET_RATE_8 = 1000.0
TARGET_RATIO = 0.5
SPLIT_BP = (4000, 4000, 2000)
ESCROW_SHARE_BP = 1000
ESCROW_REQUIRED = 10**15  # never reached: every settlement has both escrow legs
CREDITS_PER_USER = 10**12  # micro-credits (1,000,000 credits)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"bench-ledger: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="repetitions per variant; medians are reported (3)")
    parser.add_argument("--settlements", type=int, default=2000, help="settlements per run and path, several clients (2000)")
    parser.add_argument("--settlements-single", type=int, default=500, help="settlements per run and path, one client (500)")
    parser.add_argument("--clients", default="1,8", help="client process counts, comma separated (1,8)")
    parser.add_argument("--users", type=int, default=64, help="users with credits (64)")
    parser.add_argument("--nodes", type=int, default=64, help="nodes, one owner each (64)")
    parser.add_argument("--warmup", type=int, default=40, help="unmeasured settlements per client and path (40)")
    parser.add_argument("--profile-settlements", type=int, default=300, help="single-client breakdown; 0 skips it (300)")
    parser.add_argument("--no-same-user", action="store_true", help="skip the 'all clients on one user' variant")
    parser.add_argument(
        "--synchronous-commit", choices=("server", "on", "off"), default="server",
        help="session setting for both paths (server: leave the server's; 'off' is a diagnostic only)",
    )
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432", help="PostgreSQL server URL")
    parser.add_argument("--database", default="bim_ledger_bench", help="dropped and recreated (bim_ledger_bench)")
    parser.add_argument("--keep-db", action="store_true", help="do not drop the database at the end")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 run of 200 settlements, small pools")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.settlements, args.settlements_single, args.warmup, args.profile_settlements = 1, 200, 100, 5, 50
        args.users, args.nodes = min(args.users, 16), min(args.nodes, 16)
    try:
        args.client_counts = sorted({int(c) for c in args.clients.split(",") if c.strip()})
    except ValueError:
        parser.error("--clients takes integers, e.g. 1,8")
    if not args.client_counts or min(args.client_counts) < 1:
        parser.error("--clients must name at least one count >= 1")
    if min(args.runs, args.settlements, args.settlements_single) < 1 or args.warmup < 0 or args.profile_settlements < 0:
        parser.error("--runs and --settlements* must be >= 1, --warmup and --profile-settlements >= 0")
    if args.nodes < 2:
        parser.error("--nodes must be at least 2: a settlement pays two nodes")
    if args.users < max(args.client_counts):
        parser.error("--users must be at least the largest client count (each client settles its own users' jobs)")
    return args


# ---------------------------------------------------------------- database and Django


def database_recreate(server: str, name: str, *, create: bool = True) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(f"{server.rstrip('/')}/postgres", autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if create:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def django_setup(database_url: str) -> None:
    """Settings read DATABASE_URL; without REDIS_URL they pick eager Celery and the
    in-memory channel layer, which the ledger never touches."""
    os.environ.pop("REDIS_URL", None)
    os.environ.update(DJANGO_SETTINGS_MODULE="bim_site.settings", DATABASE_URL=database_url)
    import django

    django.setup()


def backend_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a PostgreSQL backend (same machine), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def session_setup_sql(sync_commit: str) -> list[str]:
    return [] if sync_commit == "server" else [f"SET synchronous_commit = {sync_commit}"]


# ---------------------------------------------------------------- world


def build_world(args: argparse.Namespace) -> dict[str, Any]:
    """Users with credits, node owners and nodes, a subnet, and every account the
    settlements touch (made here, so neither path creates accounts while timed)."""
    from django.contrib.auth import get_user_model

    from bim_core import protocol
    from bim_core.contracts import build_contract
    from ledger.accounts import accounts_get
    from ledger.models import AccountKind
    from ledger.services import credits_top_up
    from registry.models import Node
    from subnets.models import License, Subnet

    User = get_user_model()
    license_ = License.objects.create(slug="apache-2.0", version="2.0", name="Apache License 2.0")
    subnet = Subnet.objects.create(
        slug="bench-ledger", name="ledger bench", task_type="embedding", model_id="bench/minilm",
        model_checksum="ab" * 32, runtime_id="onnxruntime/bench",
        tolerances={"cosine_min": 0.9999, "norm_tolerance": 0.001},
        preprocessing={"max_tokens": 256, "pooling": "mean", "normalize": True},
        price_per_call_micro=333, price_per_item_micro=1000,
        split_node_a_bp=SPLIT_BP[0], split_node_b_bp=SPLIT_BP[1], split_registry_bp=SPLIT_BP[2],
        escrow_share_bp=ESCROW_SHARE_BP, escrow_required_micro=ESCROW_REQUIRED, license=license_,
    )
    users = User.objects.bulk_create([User(username=f"bench-user-{i}") for i in range(args.users)])
    owners = User.objects.bulk_create([User(username=f"bench-owner-{i}") for i in range(args.nodes)])
    rng = random.Random(1)
    nodes = Node.objects.bulk_create(
        [
            Node(owner=owner, name=f"bench-node-{i}", public_key=base64.b64encode(rng.randbytes(32)).decode())
            for i, owner in enumerate(owners)
        ]
    )
    for user in users:
        credits_top_up(user=user, amount=CREDITS_PER_USER, idempotency_key=f"bench:{user.pk}")
    specs = [(AccountKind.CLEARING, None, None), (AccountKind.REGISTRY_REVENUE, None, None)]
    for user in users:
        specs += [(AccountKind.USER_CREDITS, user.pk, None), (AccountKind.USER_HOLD, user.pk, None)]
    for node in nodes:
        specs += [(AccountKind.NODE_EARNINGS, None, node.pk), (AccountKind.NODE_ESCROW, None, node.pk)]
    accounts = accounts_get(specs)
    clearing, registry = accounts[0], accounts[1]
    user_accounts = {u.pk: (accounts[2 + 2 * i].pk, accounts[3 + 2 * i].pk) for i, u in enumerate(users)}
    base = 2 + 2 * len(users)
    node_accounts = {n.pk: (accounts[base + 2 * i].pk, accounts[base + 2 * i + 1].pk) for i, n in enumerate(nodes)}
    contract = build_contract(
        job_id="template", subnet=subnet.slug, task_type=subnet.task_type, model_id=subnet.model_id,
        model_checksum=subnet.model_checksum, runtime_id=subnet.runtime_id, tokenizer_checksum="",
        determinism={"temperature": 0, "top_p": 1, "seed": 0}, tolerances=subnet.tolerances,
        preprocessing=subnet.preprocessing, input_hash=protocol.sha256_hex(b"bench"),
        limits={"max_items": 64, "latency_ms": 60_000},
        session_key_pub=protocol.public_key_b64(protocol.new_private_key()),
    )
    return {
        "subnet_id": subnet.pk,
        "user_ids": [u.pk for u in users],
        "node_ids": [n.pk for n in nodes],
        "node_owner": {n.pk: n.owner_id for n in nodes},
        "user_accounts": user_accounts,
        "node_accounts": node_accounts,
        "clearing": clearing.pk,
        "registry": registry.pk,
        "contract": contract,
    }


def make_jobs(world: dict[str, Any], tag: str, per_client_users: list[list[int]], count: int, seed: int) -> list[list[tuple]]:
    """`count` settled Job rows (made now, outside the clock), dealt round-robin to the
    clients; returns each client's plan of (job_id, user_id, price, node_a, node_b).
    The same seed gives the same prices and node pairs (so ORM and raw runs match)."""
    from django.utils import timezone

    from bim_core import protocol
    from registry.models import Job, JobState

    rng = random.Random(seed)
    clients = len(per_client_users)
    plans: list[list[tuple]] = [[] for _ in range(clients)]
    rows = []
    now = timezone.now()
    for i in range(count):
        client = i % clients
        users = per_client_users[client]
        user_id = users[(i // clients) % len(users)]
        while True:
            node_a, node_b = rng.sample(world["node_ids"], 2)
            if world["node_owner"][node_a] != world["node_owner"][node_b]:
                break
        items = 1 + rng.randrange(8)
        price = 333 + 1000 * items
        job_id = uuid.uuid4()
        contract = {**world["contract"], "job_id": str(job_id)}
        rows.append(
            Job(
                id=job_id, user_id=user_id, subnet_id=world["subnet_id"], idempotency_key=f"{tag}:{i}",
                state=JobState.SETTLED, contract=contract, contract_hash=protocol.contract_hash(contract),
                inputs={"texts": ["bench"] * items}, item_count=items, price_micro=price,
                expires_at=now, finished_at=now,
            )
        )
        plans[client].append((job_id, user_id, price, node_a, node_b))
    Job.objects.bulk_create(rows, batch_size=1000)
    return plans


def expected_rows(plans: list[list[tuple]]) -> dict[str, int]:
    """Transfers per kind and PendingDelta rows the plans must leave behind."""


    expected = {"hold": 0, "capture": 0, "payout": 0, "escrow": 0, "pending_delta": 0}
    for plan in plans:
        for _, _, price, _, _ in plan:
            split = split_amount(price, SPLIT_BP)
            expected["hold"] += 1
            expected["capture"] += 1
            expected["payout"] += sum(1 for part in (split.registry, split.node_a, split.node_b) if part)
            expected["escrow"] += sum(1 for part in (split.node_a, split.node_b) if part * ESCROW_SHARE_BP // 10_000)
            expected["pending_delta"] += 1 if split.registry else 0
    return expected


def verify(plans: list[list[tuple]], pending_before: int) -> dict[str, Any]:
    from django.db.models import Count

    from ledger.checks import ledger_violations
    from ledger.models import PendingDelta, Transfer

    job_ids = [spec[0] for plan in plans for spec in plan]
    expected = expected_rows(plans)
    transfers = Transfer.objects.filter(job_id__in=job_ids)
    found = dict(transfers.values_list("kind").annotate(n=Count("id")).values_list("kind", "n"))
    found = {kind: found.get(kind, 0) for kind in ("hold", "capture", "payout", "escrow")}
    found["pending_delta"] = PendingDelta.objects.count() - pending_before
    jobs_touched = transfers.values("job_id").distinct().count()
    violations = ledger_violations()
    ok = found == expected and jobs_touched == len(job_ids) and not violations
    result: dict[str, Any] = {"ok": ok, "transfers": sum(v for k, v in found.items() if k != "pending_delta")}
    if not ok:
        result.update(expected=expected, found=found, jobs_touched=jobs_touched, violations=violations[:10])
    return result


# ---------------------------------------------------------------- the two paths


class Settler:
    """Both settlement paths over this process's own connections."""

    def __init__(self, world: dict[str, Any], conninfo: str, sync_commit: str) -> None:
        import psycopg
        from django.contrib.auth import get_user_model
        from django.db import connection

        from ledger.services import NodeEscrowRule

        self.world = world
        self.rule = NodeEscrowRule(share_bp=ESCROW_SHARE_BP, required=ESCROW_REQUIRED)
        self.users = get_user_model().objects.in_bulk(world["user_ids"])
        self.raw = psycopg.connect(conninfo, autocommit=True)
        with connection.cursor() as cursor:
            for statement in session_setup_sql(sync_commit):
                cursor.execute(statement)
                self.raw.execute(statement)
            cursor.execute("SELECT pg_backend_pid()")
            self.orm_pid = cursor.fetchone()[0]
        self.raw_pid = self.raw.info.backend_pid
        self.raw_time = 0.0  # seconds inside raw statements (profile only)
        self.raw_statements = 0

    def orm(self, spec: tuple) -> None:
        """What the registry does: job_hold at submit, job_settle on agreement; here in one transaction."""
        from django.db import transaction

        from ledger.services import job_hold, job_settle

        job_id, user_id, price, node_a, node_b = spec
        user = self.users[user_id]
        with transaction.atomic():
            job_hold(job_id=job_id, user=user, amount=price)
            job_settle(job_id=job_id, user=user, amount=price, node_ids=(node_a, node_b), split_bp=SPLIT_BP, escrow=self.rule)

    def _accounts(self, spec: tuple) -> tuple[list[int], tuple]:
        _, user_id, _, node_a, node_b = spec
        credits, hold = self.world["user_accounts"][user_id]
        earn_a, escrow_a = self.world["node_accounts"][node_a]
        earn_b, escrow_b = self.world["node_accounts"][node_b]
        lockable = sorted({credits, hold, earn_a, escrow_a, earn_b, escrow_b})
        return lockable, (credits, hold, earn_a, escrow_a, earn_b, escrow_b)

    def _legs(self, spec: tuple, accounts: tuple, balance: dict[int, int]) -> tuple[list[tuple], dict[int, int]]:
        """The legs job_hold + job_settle post, as (key, debit, credit, amount, kind, reason),
        and the net change per account; raises when a locked account would go negative."""


        job_id, _, price, _, _ = spec
        credits, hold, earn_a, escrow_a, earn_b, escrow_b = accounts
        clearing, registry = self.world["clearing"], self.world["registry"]
        split = split_amount(price, SPLIT_BP)
        legs = [(f"job:{job_id}:hold", credits, hold, price, "hold", "hold on submit")]
        legs.append((f"job:{job_id}:capture", hold, clearing, price, "capture", "capture on settle"))
        if split.registry:
            legs.append((f"job:{job_id}:payout:registry", clearing, registry, split.registry, "payout", "registry share"))
        for role, share, earned, escrowed in (("A", split.node_a, earn_a, escrow_a), ("B", split.node_b, earn_b, escrow_b)):
            if not share:
                continue
            legs.append((f"job:{job_id}:payout:{role}", clearing, earned, share, "payout", f"node {role} share"))
            to_escrow = min(share * ESCROW_SHARE_BP // 10_000, ESCROW_REQUIRED - balance[escrowed])
            if to_escrow > 0:
                legs.append((f"job:{job_id}:escrow:{role}", earned, escrowed, to_escrow, "escrow", "escrow from earnings"))
        change: dict[int, int] = {}
        for _, debit, credit, amount, _, _ in legs:
            change[debit] = change.get(debit, 0) - amount
            change[credit] = change.get(credit, 0) + amount
        for pk, value in balance.items():
            if value + change.get(pk, 0) < 0:
                raise RuntimeError(f"account {pk} would go negative")
        return legs, change

    def raw_settle(self, spec: tuple, *, timed: bool = False) -> None:
        """The same rows with raw SQL: one lock statement, one insert of the transfers,
        one balance update, one PendingDelta insert."""
        lockable, accounts = self._accounts(spec)
        execute = self._timed if timed else self._plain
        with self.raw.transaction():
            cur = self.raw.cursor()
            execute(cur, "SELECT id, balance FROM ledger_account WHERE id = ANY(%s) ORDER BY id FOR UPDATE", (lockable,))
            balance = dict(cur.fetchall())
            legs, change = self._legs(spec, accounts, balance)
            execute(
                cur,
                "INSERT INTO ledger_transfer (idempotency_key, debit_id, credit_id, amount, kind, job_id, reason, reverses_id, created_at) "
                "SELECT k, d, c, a, t, %s, r, NULL, now() "
                "FROM unnest(%s::varchar[], %s::bigint[], %s::bigint[], %s::bigint[], %s::varchar[], %s::varchar[]) AS l(k, d, c, a, t, r)",
                (spec[0], *map(list, zip(*legs))),
            )
            updates = [(pk, d) for pk, d in change.items() if pk in balance and d]
            execute(
                cur,
                "UPDATE ledger_account AS a SET balance = a.balance + u.d "
                "FROM unnest(%s::bigint[], %s::bigint[]) AS u(id, d) WHERE a.id = u.id",
                tuple(map(list, zip(*updates))),
            )
            pending = [(pk, d) for pk, d in change.items() if pk not in balance and d]
            if pending:
                execute(
                    cur,
                    "INSERT INTO ledger_pendingdelta (account_id, amount) SELECT * FROM unnest(%s::bigint[], %s::bigint[])",
                    tuple(map(list, zip(*pending))),
                )

    def orm_lean(self, spec: tuple) -> None:
        """What-if, not the service: the raw path's four statements written with the ORM
        (account ids known, one lock, one bulk insert, one CASE update, one PendingDelta
        insert, no savepoints and no idempotency look-ups). Separates the cost of Django's
        query building from the cost of the service's extra statements."""
        from django.db import transaction
        from django.db.models import Case, F, Value, When

        from ledger.models import Account, PendingDelta, Transfer

        lockable, accounts = self._accounts(spec)
        with transaction.atomic():
            balance = dict(
                Account.objects.select_for_update().filter(pk__in=lockable).order_by("pk").values_list("pk", "balance")
            )
            legs, change = self._legs(spec, accounts, balance)
            Transfer.objects.bulk_create(
                Transfer(idempotency_key=k, debit_id=d, credit_id=c, amount=a, kind=t, job_id=spec[0], reason=r)
                for k, d, c, a, t, r in legs
            )
            updates = {pk: d for pk, d in change.items() if pk in balance and d}
            Account.objects.filter(pk__in=updates).update(
                balance=F("balance") + Case(*(When(pk=pk, then=Value(d)) for pk, d in updates.items()))
            )
            PendingDelta.objects.bulk_create(
                PendingDelta(account_id=pk, amount=d) for pk, d in change.items() if pk not in balance and d
            )

    @staticmethod
    def _plain(cur: Any, sql: str, params: tuple) -> None:
        cur.execute(sql, params)

    def _timed(self, cur: Any, sql: str, params: tuple) -> None:
        start = time.perf_counter()
        cur.execute(sql, params)
        self.raw_time += time.perf_counter() - start
        self.raw_statements += 1

    def settle(self, path: str, spec: tuple) -> None:
        if path == "orm":
            self.orm(spec)
        elif path == "raw":
            self.raw_settle(spec)
        else:
            self.orm_lean(spec)

    def backend_pid(self, path: str) -> int:
        return self.raw_pid if path == "raw" else self.orm_pid

    def close(self) -> None:
        from django.db import connection

        self.raw.close()
        connection.close()


# ---------------------------------------------------------------- client processes


def client_main(wid: int, inbox: Any, outbox: Any, world: dict[str, Any], conninfo: str, sync_commit: str) -> None:
    try:
        settler = Settler(world, conninfo, sync_commit)
    except Exception:  # noqa: BLE001 - reported to the parent, which stops
        outbox.put(("error", wid, traceback.format_exc()))
        return
    outbox.put(("up", wid))
    while True:
        message = inbox.get()
        if message[0] == "stop":
            settler.close()
            return
        _, path, plan = message
        outbox.put(("ready", wid))
        inbox.get()  # "go"
        pid = settler.backend_pid(path)
        cpu0, backend0 = time.process_time(), backend_cpu_s(pid)
        latencies, errors = [], []
        start = time.monotonic()
        for spec in plan:
            t0 = time.perf_counter()
            try:
                settler.settle(path, spec)
            except Exception as exc:  # noqa: BLE001 - counted and reported; the run then fails verification
                errors.append(f"{type(exc).__name__}: {exc}"[:300])
            latencies.append(time.perf_counter() - t0)
        end = time.monotonic()
        backend1 = backend_cpu_s(pid)
        outbox.put(
            (
                "done", wid, start, end, len(plan) - len(errors), errors[:3], len(errors), latencies,
                time.process_time() - cpu0, None if backend0 is None or backend1 is None else backend1 - backend0,
            )
        )


class Clients:
    def __init__(self, count: int, world: dict[str, Any], conninfo: str, sync_commit: str) -> None:
        from django.db import connections

        # No connection may cross the fork: closing them only hands them back to the pool
        # (settings: psycopg_pool per process), whose open sockets every child would then
        # share with the parent and each other (interleaved replies, EMPTY_QUERY). Closing
        # the pools leaves each child to open its own.
        connections.close_all()
        for conn in connections.all():
            if hasattr(conn, "close_pool"):
                conn.close_pool()
        ctx = mp.get_context("fork")
        self.outbox = ctx.Queue()
        self.inboxes = [ctx.Queue() for _ in range(count)]
        self.procs = [
            ctx.Process(target=client_main, args=(i, self.inboxes[i], self.outbox, world, conninfo, sync_commit), daemon=True)
            for i in range(count)
        ]
        for proc in self.procs:
            proc.start()
        self._collect(count, "up")

    def _collect(self, count: int, kind: str, timeout: float = 600.0) -> list[tuple]:
        got, deadline = [], time.monotonic() + timeout
        while len(got) < count:
            try:
                message = self.outbox.get(timeout=1.0)
            except queue.Empty:
                dead = [p.pid for p in self.procs if not p.is_alive()]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"clients {dead} died or timed out waiting for '{kind}'") from None
                continue
            if message[0] == "error":
                raise RuntimeError(f"client {message[1]} failed:\n{message[2]}")
            if message[0] != kind:
                raise RuntimeError(f"expected '{kind}' from the clients, got {message[0]!r}")
            got.append(message)
        return got

    def run(self, path: str, plans: list[list[tuple]]) -> dict[str, Any]:
        for inbox, plan in zip(self.inboxes, plans):
            inbox.put(("run", path, plan))
        self._collect(len(plans), "ready")
        busy0, total0 = system_cpu()
        for inbox in self.inboxes[: len(plans)]:
            inbox.put(("go",))
        done = self._collect(len(plans), "done")
        busy1, total1 = system_cpu()
        start, end = min(d[2] for d in done), max(d[3] for d in done)
        settled = sum(d[4] for d in done)
        error_count = sum(d[6] for d in done)
        latencies = sorted(x for d in done for x in d[7])
        backend = [d[9] for d in done]
        record: dict[str, Any] = {
            "settlements_per_s": round(settled / (end - start), 1),
            "seconds": round(end - start, 3),
            "settled": settled,
            "errors": error_count,
            "latency_ms": {"p50": _pct_ms(latencies, 0.50), "p95": _pct_ms(latencies, 0.95), "max": _pct_ms(latencies, 1.0)},
            "client_cpu_ms_per_settlement": round(1000 * sum(d[8] for d in done) / max(settled, 1), 3),
            "server_cpu_ms_per_settlement": (
                round(1000 * sum(backend) / max(settled, 1), 3) if all(b is not None for b in backend) else None
            ),
            "machine_cpu_busy": round((busy1 - busy0) / max(total1 - total0, 1), 3),
        }
        if error_count:
            record["error_samples"] = [e for d in done for e in d[5]][:5]
        return record

    def stop(self) -> None:
        for inbox in self.inboxes:
            inbox.put(("stop",))
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


def _pct_ms(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return round(1000 * sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))], 2)


# ---------------------------------------------------------------- in-process measurements


def orm_queries(settler: Settler, spec: tuple) -> dict[str, Any]:
    """The statements one ORM settlement sends, each a round trip to the server."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        settler.orm(spec)
    by_kind: dict[str, int] = {}
    statements = []
    for query in captured.captured_queries:
        sql = query["sql"]
        word = sql.split(None, 1)[0].upper()
        if word == "SELECT" and "FOR UPDATE" in sql:
            word = "SELECT FOR UPDATE"
        elif word == "RELEASE":
            word = "RELEASE SAVEPOINT"
        by_kind[word] = by_kind.get(word, 0) + 1
        statements.append(_shorten(sql))
    return {
        # Django 5.2 logs BEGIN and COMMIT too; count them once either way.
        "round_trips_per_settlement": len(captured.captured_queries) + ("BEGIN" not in by_kind) + ("COMMIT" not in by_kind),
        "by_kind": by_kind,
        "statements": statements,
        "raw_round_trips_per_settlement": 6,
    }


def _shorten(sql: str) -> str:
    import re

    sql = re.sub(r"'[0-9a-f-]{36}[^']*'", "'…'", sql)
    sql = re.sub(r"\(\d+(, \d+)+\)", "(…)", sql)
    return sql if len(sql) <= 160 else sql[:157] + "..."


def cpu_ceiling(client_ms: float | None, server_ms: float | None) -> float | None:
    """Settlements per second this machine's cores could sustain if client and server
    CPU per settlement were the only limit (no waits, no other tenants)."""
    if client_ms is None or server_ms is None or client_ms + server_ms <= 0:
        return None
    return round((os.cpu_count() or 1) * 1000 / (client_ms + server_ms), 1)


def profile(settler: Settler, world: dict[str, Any], count: int, tag: str) -> tuple[dict[str, Any], list[list[tuple]]]:
    """One client, in this process: where one settlement's wall time goes (inside database
    calls, i.e. network + server; this process's CPU; the backend's CPU)."""
    from django.db import connection

    result: dict[str, Any] = {}
    all_plans: list[list[tuple]] = []
    for path in ("raw", "orm", "orm_lean"):
        plans = make_jobs(world, f"{tag}-{path}", [world["user_ids"]], count, seed=zlib.crc32(tag.encode()))
        all_plans += plans
        in_db = [0.0, 0]

        def wrapper(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
            start = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                in_db[0] += time.perf_counter() - start
                in_db[1] += 1

        settler.raw_time, settler.raw_statements = 0.0, 0
        pid = settler.backend_pid(path)
        backend0, cpu0 = backend_cpu_s(pid), time.process_time()
        start = time.perf_counter()
        if path == "raw":
            for spec in plans[0]:
                settler.raw_settle(spec, timed=True)
            in_db = [settler.raw_time, settler.raw_statements]
        else:
            with connection.execute_wrapper(wrapper):
                for spec in plans[0]:
                    settler.settle(path, spec)
        wall = time.perf_counter() - start
        cpu, backend1 = time.process_time() - cpu0, backend_cpu_s(pid)
        per = 1000 / count
        client_ms = round(cpu * per, 3)
        server_ms = None if backend0 is None or backend1 is None else round((backend1 - backend0) * per, 3)
        result[path] = {
            "settlements_per_s": round(count / wall, 1),
            "wall_ms": round(wall * per, 3),
            "in_statements_ms": round(in_db[0] * per, 3),
            "outside_statements_ms": round((wall - in_db[0]) * per, 3),
            "statements": round(in_db[1] / count, 2),
            "client_cpu_ms": client_ms,
            "server_cpu_ms": server_ms,
            "cpu_ceiling_per_s": cpu_ceiling(client_ms, server_ms),
        }
    result["note"] = (
        "ms per settlement, one client in the bench's own process, no contention. in_statements = wall time "
        "inside cursor.execute (round trip + server work; BEGIN and COMMIT are outside, so the commit's WAL "
        "flush is in outside_statements); client_cpu = this process (Python, ORM, driver); server_cpu = the "
        "PostgreSQL backend; cpu_ceiling_per_s = cpu_count * 1000 / (client_cpu + server_cpu). orm_lean is a "
        "what-if, not the service: the raw path's 4 statements written with the ORM (no savepoints, no "
        "idempotency look-ups, account ids known)"
    )
    return result, all_plans


# ---------------------------------------------------------------- main


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    import django
    import psycopg
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        version = cursor.fetchone()[0]
        cursor.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit', 'wal_sync_method', "
            "'shared_buffers', 'max_connections', 'commit_delay', 'full_page_writes') ORDER BY name"
        )
        settings = dict(cursor.fetchall())
    return {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "loadavg_at_start": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "psycopg": f"{psycopg.__version__} ({psycopg.pq.__impl__})",
        "postgresql": version,
        "postgresql_settings": settings,
        "session_synchronous_commit": args.synchronous_commit,
    }


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    orm = [r["orm"]["settlements_per_s"] for r in records]
    raw = [r["raw"]["settlements_per_s"] for r in records]
    orm_median, raw_median = statistics.median(orm), statistics.median(raw)
    return {
        "orm_settlements_per_s": orm_median,
        "raw_settlements_per_s": raw_median,
        "ratio": round(orm_median / raw_median, 3) if raw_median else None,
        "ratio_median_of_runs": round(statistics.median(r["ratio"] for r in records), 3),
        "orm_client_cpu_ms_per_settlement": statistics.median(r["orm"]["client_cpu_ms_per_settlement"] for r in records),
        "raw_client_cpu_ms_per_settlement": statistics.median(r["raw"]["client_cpu_ms_per_settlement"] for r in records),
        "orm_server_cpu_ms_per_settlement": _median_or_none(r["orm"]["server_cpu_ms_per_settlement"] for r in records),
        "raw_server_cpu_ms_per_settlement": _median_or_none(r["raw"]["server_cpu_ms_per_settlement"] for r in records),
        "orm_cpu_ceiling_per_s": cpu_ceiling(
            statistics.median(r["orm"]["client_cpu_ms_per_settlement"] for r in records),
            _median_or_none(r["orm"]["server_cpu_ms_per_settlement"] for r in records),
        ),
        "raw_cpu_ceiling_per_s": cpu_ceiling(
            statistics.median(r["raw"]["client_cpu_ms_per_settlement"] for r in records),
            _median_or_none(r["raw"]["server_cpu_ms_per_settlement"] for r in records),
        ),
        "orm_latency_p50_ms": statistics.median(r["orm"]["latency_ms"]["p50"] for r in records),
        "raw_latency_p50_ms": statistics.median(r["raw"]["latency_ms"]["p50"] for r in records),
    }


def _median_or_none(values: Any) -> float | None:
    values = list(values)
    return None if any(v is None for v in values) else statistics.median(values)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    server = args.server.rstrip("/")
    conninfo = f"{server}/{args.database}"
    log(f"recreating database {args.database} on {server}")
    database_recreate(server, args.database)
    django_setup(conninfo)

    from django.core.management import call_command
    from django.db import connection, connections

    from ledger.models import PendingDelta

    log("migrating")
    call_command("migrate", "--noinput", verbosity=0)
    machine = machine_info(args)
    log(f"setup: {args.users} users, {args.nodes} nodes")
    world = build_world(args)
    biggest = max(args.client_counts)
    variants: list[tuple[str, int, bool]] = [(f"clients_{k}", k, False) for k in args.client_counts]
    if biggest > 1 and not args.no_same_user:
        variants.append((f"clients_{biggest}_same_user", biggest, True))

    clients = None
    settler = None
    checks = {"runs_checked": 0, "failed": []}
    output: dict[str, Any] = {}
    try:
        clients = Clients(biggest, world, conninfo, args.synchronous_commit)
        per_client = [world["user_ids"][c::biggest] for c in range(biggest)]
        if args.warmup:
            log(f"warm-up: {args.warmup} settlements per client and path")
            for path in ("orm", "raw"):
                plans = make_jobs(world, f"warmup-{path}", per_client, args.warmup * biggest, seed=0)
                pending = PendingDelta.objects.count()
                clients.run(path, plans)
                check = verify(plans, pending)
                checks["runs_checked"] += 1
                if not check["ok"]:
                    checks["failed"].append({"run": f"warmup-{path}", **check})
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")

        settler = Settler(world, conninfo, args.synchronous_commit)
        plan = make_jobs(world, "queries", [world["user_ids"]], 1, seed=0)
        pending = PendingDelta.objects.count()
        queries = orm_queries(settler, plan[0][0])
        check = verify(plan, pending)
        checks["runs_checked"] += 1
        if not check["ok"]:
            checks["failed"].append({"run": "queries", **check})
        log(f"ORM: {queries['round_trips_per_settlement']} round trips per settlement (raw: 6)")

        profile_result = None
        if args.profile_settlements:
            log(f"single-client profile: {args.profile_settlements} settlements per path")
            pending = PendingDelta.objects.count()
            profile_result, plans = profile(settler, world, args.profile_settlements, "profile")
            check = verify(plans, pending)
            checks["runs_checked"] += 1
            if not check["ok"]:
                checks["failed"].append({"run": "profile", **check})
        settler.close()
        settler = None
        connections.close_all()

        results: dict[str, Any] = {}
        for name, k, same_user in variants:
            count = args.settlements if k > 1 else args.settlements_single
            users = [[world["user_ids"][0]]] * k if same_user else [world["user_ids"][c::k] for c in range(k)]
            records = []
            for run in range(args.runs):
                record: dict[str, Any] = {"run": run + 1}
                order = ("raw", "orm") if run % 2 == 0 else ("orm", "raw")
                for path in order:
                    tag = f"{name}-r{run + 1}-{path}"
                    plans = make_jobs(world, tag, users, count, seed=zlib.crc32(f"{name}-{run}".encode()))
                    pending = PendingDelta.objects.count()
                    record[path] = clients.run(path, plans)
                    verify_start = time.perf_counter()
                    check = verify(plans, pending)
                    checks["runs_checked"] += 1
                    record[path]["verified"] = check["ok"]
                    record[path]["verify_s"] = round(time.perf_counter() - verify_start, 2)
                    record[path]["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
                    if not check["ok"]:
                        checks["failed"].append({"run": tag, **check})
                record["order"] = list(order)
                record["ratio"] = round(record["orm"]["settlements_per_s"] / record["raw"]["settlements_per_s"], 3)
                records.append(record)
                log(
                    f"{name} run {run + 1}/{args.runs}: orm {record['orm']['settlements_per_s']}/s, "
                    f"raw {record['raw']['settlements_per_s']}/s, ratio {record['ratio']}"
                )
            results[name] = {
                "clients": k,
                "same_user": same_user,
                "settlements_per_run": count,
                "median": summarize(records),
                "runs": records,
            }

        target_name = f"clients_{8 if 8 in args.client_counts else biggest}"
        headline = results[target_name]["median"]
        targets = {
            "variant": target_name,
            "orm_settlements_per_s": {"target": TARGET_RATE_8, "measured": headline["orm_settlements_per_s"],
                                      "met": headline["orm_settlements_per_s"] >= TARGET_RATE_8},
            "ratio_to_raw": {"target": TARGET_RATIO, "measured": headline["ratio"],
                             "met": headline["ratio"] is not None and headline["ratio"] >= TARGET_RATIO},
        }
        if target_name != "clients_8":
            targets["note"] = "the targets are stated for 8 clients; this invocation ran without 8"
        targets["met"] = targets["orm_settlements_per_s"]["met"] and targets["ratio_to_raw"]["met"]
        machine["loadavg_at_end"] = os.getloadavg()
        output = {
            "benchmark": "ledger_settlements",
            "unit": "settlements/s",
            "settlement": (
                "job_hold + job_settle in one transaction: 7 transfers (hold, capture, 3 payouts, 2 escrow), "
                "5 balance updates (net), 1 PendingDelta row"
            ),
            "baseline": "raw psycopg, one transaction per settlement: SELECT FOR UPDATE, INSERT transfers, UPDATE balances, INSERT pending delta",
            "config": {
                "runs": args.runs, "settlements_per_run": args.settlements,
                "settlements_per_run_single_client": args.settlements_single, "client_counts": args.client_counts,
                "users": args.users, "nodes": args.nodes, "warmup_per_client": args.warmup,
                "split_bp": SPLIT_BP, "escrow_share_bp": ESCROW_SHARE_BP, "quick": args.quick,
                "database": args.database,
            },
            "machine": machine,
            "targets": targets,
            "variants": {name: {k: v for k, v in r.items() if k != "runs"} for name, r in results.items()},
            "orm_queries": queries,
            "profile_1_client": profile_result,
            "verification": {"runs_checked": checks["runs_checked"], "all_ok": not checks["failed"], "failed": checks["failed"]},
            "runs": {name: r["runs"] for name, r in results.items()},
        }
    finally:
        if settler is not None:
            settler.close()
        if clients is not None:
            clients.stop()
        connections.close_all()
        if not args.keep_db:
            database_recreate(server, args.database, create=False)
    print(json.dumps(output, indent=2, default=str))
    return 0 if output and output["verification"]["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
