"""A trusted subnet end to end (issue 15): daphne, a Celery worker with beat, PostgreSQL,
Redis and four contributor node processes running the real model, two of them marked
trusted by an operator. Only those two receive the subnet's jobs; each settlement pays by
the subnet's split (a higher registry share); every receipt says trusted and verifies."""

from __future__ import annotations

import time

import pytest
from django.conf import settings

from bim_core.money import split_amount
from bim_sdk import Client, receipt_trusted, verify_receipt
from ledger.accounts import account_balance
from ledger.checks import ledger_violations
from ledger.models import Account, AccountKind
from registry import sanctions
from registry.models import Assignment, Job, JobState, Node
from subnets.lifecycle import subnet_update
from subnets.models import Subnet
from tests.factories import UserFactory
from tests.market import running_market

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(360)]

SUBNET = "minilm-embed"
TRUSTED = ("alice", "bob")
SPLIT = (3000, 3000, 4000)
TEXTS = [
    ["Patient record: confidential.", "Only the registry's nodes see this."],
    ["Sensitive workload number two."],
    ["A third sensitive text.", "And another one."],
]


@pytest.mark.django_db(transaction=True)
def test_a_trusted_subnets_jobs_run_only_on_trusted_nodes_and_settle_by_its_split(tmp_path):
    nodes = {name: SUBNET for name in ("alice", "bob", "carol", "dave")}
    with running_market(tmp_path, contributors="alice,bob,carol,dave", nodes=nodes) as (url, tokens, _):
        operator = UserFactory(username="ops", is_staff=True)
        subnet = Subnet.objects.get(slug=SUBNET)
        subnet_update(
            subnet_id=subnet.pk,
            changes={"trusted": True, "split_node_a_bp": SPLIT[0], "split_node_b_bp": SPLIT[1], "split_registry_bp": SPLIT[2]},
            operator=operator,
            reason="sensitive workloads",
        )
        for name in TRUSTED:
            sanctions.node_trust(
                node_id=Node.objects.get(owner__username=name).pk, operator=operator, reason=f"{name}: registry rack"
            )
        # The registry's routing indexes rebuild within INDEX_MAX_AGE_S (this process bumps
        # its own key prefix, not theirs); dispatch re-reads trust anyway.
        time.sleep(settings.INDEX_MAX_AGE_S + 1)
        client = Client(url, tokens["demo-user"], timeout=30)
        jobs = [client.submit_embeddings(SUBNET, texts, idempotency_key=f"trusted-{i}") for i, texts in enumerate(TEXTS)]
        finals = [client.wait(job["id"], timeout=240) for job in jobs]
        registry_key = client.registry_key()

    trusted_ids = set(Node.objects.filter(owner__username__in=TRUSTED).values_list("pk", flat=True))
    assert Node.objects.filter(trusted=True).count() == 2
    # Every offer of the subnet's jobs (the user's, and any honeypot beat issued) went to a
    # trusted node; carol's and dave's nodes were never offered one.
    offered = set(Assignment.objects.filter(job__subnet__slug=SUBNET).values_list("node_id", flat=True))
    assert offered and offered <= trusted_ids
    registry_account = Account.objects.get(kind=AccountKind.REGISTRY_REVENUE).pk
    nodes_share = 0
    for final, texts in zip(finals, TEXTS):
        assert final["state"] == "settled", final
        assert final["contract"]["trusted"] is True
        vectors = verify_receipt(final, registry_key=registry_key, inputs={"texts": texts}, require_trusted=True)
        assert vectors.shape == (len(texts), 384) and receipt_trusted(final) is True
        receipt = final["receipt"]
        assert {n["node_id"] for n in receipt["nodes"]} == {str(pk) for pk in trusted_ids}
        price = receipt["settlement"]["price_micro"]
        expected = split_amount(price, SPLIT)
        to_registry = sum(t["amount"] for t in receipt["settlement"]["transfers"] if t["credit_account"] == registry_account)
        assert price > 0 and to_registry == expected.registry > price * 2 // 10
        nodes_share += expected.node_a + expected.node_b
    assert Job.objects.filter(state=JobState.SETTLED, honeypot__isnull=True).count() == len(TEXTS)
    # The nodes' part (earnings and escrow together: the escrow rule moves a share of each
    # payout between the two) is the rest of the split, and only trusted nodes hold any.
    node_accounts = Account.objects.filter(kind__in=[AccountKind.NODE_EARNINGS, AccountKind.NODE_ESCROW])
    held = [(a.node_id, account_balance(a)) for a in node_accounts]
    assert {node_id for node_id, balance in held if balance} <= trusted_ids
    assert sum(balance for _, balance in held) == nodes_share
    assert ledger_violations() == []
