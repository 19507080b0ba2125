"""The rows every settlement shares are written last in its transaction, so each is held
for the commit alone, not across the rest of the settlement: the agreement statistic of a
pair of environments (one row for every job of the subnet whose nodes run alike) after
everything, and the nodes' rows after the receipt is signed and the job marked settled.
Written first, settlements queued behind each other on them (issue 13's lock waits)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from registry import submit
from registry.models import AgreementStat, Job, JobState
from registry.verify import job_verify
from tests.factories import SubnetFactory, answer, online_node, unit_vectors, user_with_credits

pytestmark = pytest.mark.django_db


def writes(statements: list[str]) -> list[str]:
    """The tables written, in order."""
    tables = []
    for sql in statements:
        verb = sql.split()[0].upper()
        if "bim_ledger_post" in sql or sql.startswith('INSERT INTO "ledger_transfer"'):
            tables.append("ledger")  # the posting: PostgreSQL's function, or the ORM's rows elsewhere
        elif verb in ("UPDATE", "INSERT"):
            tables.append(sql.split('"')[1])
    return tables


def test_a_settlement_writes_the_shared_rows_last(settings):
    settings.VERIFY_IN_PLACE = False  # the test verifies, and watches
    subnet = SubnetFactory()
    nodes = [online_node(subnet) for _ in range(2)]
    job, _ = submit.job_submit(user=user_with_credits(5), subnet_slug=subnet.slug, inputs={"texts": ["a"]}, idempotency_key="k")
    answer(job.id, nodes, unit_vectors(1), unit_vectors(1))

    with CaptureQueriesContext(connection) as captured:
        job_verify(job_id=job.id)

    assert Job.objects.get(pk=job.pk).state == JobState.SETTLED
    assert AgreementStat.objects.get(subnet=subnet).samples == 1
    written = writes([q["sql"] for q in captured.captured_queries])
    # (The subnet's first sample creates its row: an UPDATE of none, an INSERT, an UPDATE.)
    assert set(written[written.index("registry_agreementstat") :]) == {"registry_agreementstat"}, written
    job_settled = max(i for i, table in enumerate(written) if table == "registry_job")
    node_rows = [i for i, table in enumerate(written) if table == "registry_node"]
    assert node_rows and min(node_rows) > job_settled > written.index("ledger"), written
