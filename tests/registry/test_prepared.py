"""A prepared statement (registry.prepared) does what the ORM does with the same queryset:
a query returns the same instances, field by field, with their select_related rows and
annotations, refuses what the ORM refuses and still locks the row it reads; an update
changes the same rows."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connection, connections, transaction
from django.db.models import Count
from django.db.models.sql.compiler import SQLCompiler, SQLUpdateCompiler
from django.db.transaction import TransactionManagementError
from django.utils import timezone

from registry.jobs import job_locked
from registry.models import Job, Node, NodeSubnet
from registry.prepared import PreparedQuery, PreparedRows, PreparedUpdate
from registry.submit import job_submit
from subnets.models import Subnet
from tests.factories import SubnetFactory, online_node, user_with_credits

pytestmark = pytest.mark.django_db


def statements_compiled(monkeypatch, compiler: type) -> list[str]:
    """The SQL of every statement `compiler` (the ORM's) builds from here on."""
    compiled: list[str] = []
    as_sql = compiler.as_sql

    def recording(self, *args, **kwargs):
        sql, params = as_sql(self, *args, **kwargs)
        compiled.append(sql)
        return sql, params

    monkeypatch.setattr(compiler, "as_sql", recording)
    return compiled


def fields_of(instance) -> dict[str, object]:
    return {field.attname: getattr(instance, field.attname) for field in instance._meta.concrete_fields}


@pytest.fixture
def job():
    subnet = SubnetFactory()
    online_node(subnet)
    created, _ = job_submit(
        user=user_with_credits(10), subnet_slug=subnet.slug, inputs={"texts": ["prepared"]}, idempotency_key="p"
    )
    return created


def test_a_locked_job_is_what_the_orm_reads_with_its_subnet_and_user(job):
    with transaction.atomic():
        prepared = job_locked(str(job.pk))  # a string id too, as the ORM takes it
        orm = Job.objects.select_for_update(of=("self",)).select_related("subnet", "user").get(pk=job.pk)
    assert fields_of(prepared) == fields_of(orm)
    assert isinstance(prepared.contract, dict) and prepared.contract == orm.contract
    with connections["default"].execute_wrapper(lambda *args: pytest.fail("the subnet and user were not loaded")):
        assert fields_of(prepared.subnet) == fields_of(orm.subnet)
        assert fields_of(prepared.user) == fields_of(orm.user)
    assert prepared._state.adding is False and prepared._state.db == "default"


def test_an_unknown_job_is_none_and_a_malformed_id_is_refused_as_the_orm_refuses_it(job):
    with transaction.atomic():
        assert job_locked(uuid.uuid4()) is None
        with pytest.raises(ValidationError):
            Job.objects.filter(pk="not-a-uuid").first()
        with pytest.raises(ValidationError):
            job_locked("not-a-uuid")


@pytest.mark.django_db(transaction=True)
def test_locking_outside_a_transaction_is_refused(job):
    with pytest.raises(TransactionManagementError):
        Job.objects.select_for_update().filter(pk=job.pk).first()
    with pytest.raises(TransactionManagementError):
        job_locked(job.pk)


@pytest.mark.django_db(transaction=True)
def test_the_job_row_is_locked_until_the_transaction_ends(job):
    if connection.vendor != "postgresql":
        pytest.fail("row locks are a PostgreSQL test: run it with DATABASE_URL set")
    outcome: list[str] = []

    def other_writer() -> None:
        try:
            with transaction.atomic():
                Job.objects.select_for_update(nowait=True).filter(pk=job.pk).first()
            outcome.append("locked it")
        except DatabaseError:
            outcome.append("refused")
        finally:
            connections.close_all()

    with transaction.atomic():
        assert job_locked(job.pk) is not None
        thread = threading.Thread(target=other_writer)
        thread.start()
        thread.join(10)
    assert outcome == ["refused"]
    thread = threading.Thread(target=other_writer)
    thread.start()
    thread.join(10)
    assert outcome == ["refused", "locked it"]


def test_a_prepared_update_changes_what_the_orms_update_changes(job):
    node = online_node(job.subnet).node
    at = timezone.now() - timedelta(minutes=3)
    update = PreparedUpdate(
        lambda pk, reputation, agreed, when: (
            Node.objects.filter(pk=pk),
            {"reputation": reputation, "jobs_agreed": agreed, "last_job_at": when},
        ),
        (uuid.UUID, float, int, datetime),
    )
    assert update.run(node.pk, 0.4375, 12, at) == 1
    node.refresh_from_db()
    assert (node.reputation, node.jobs_agreed, node.last_job_at) == (0.4375, 12, at)
    assert update.run(str(node.pk), 0.25, 13, at) == 1  # compiled once, run again with new values
    node.refresh_from_db()
    assert (node.reputation, node.jobs_agreed) == (0.25, 13)
    assert update.run(uuid.uuid4(), 0.9, 1, at) == 0
    with pytest.raises(ValidationError):
        update.run(node.pk, "0.9", 1, at)


def test_an_argument_the_database_adapts_is_built_by_the_orm_on_every_call(job):
    """Here the UUID becomes text in the SQL, so its marker is not among the parameters."""
    nodes = [online_node(job.subnet).node for _ in range(2)]
    for node in nodes:
        Node.objects.filter(pk=node.pk).update(name=str(node.pk))
    by_name = PreparedQuery(lambda pk: Node.objects.filter(name=str(pk)), (uuid.UUID,))
    assert [n.pk for n in by_name.all(nodes[0].pk)] == [nodes[0].pk]
    assert [n.pk for n in by_name.all(nodes[1].pk)] == [nodes[1].pk]


def test_annotations_are_set_as_the_orm_sets_them(job):
    counted = PreparedQuery(
        lambda pk: Job.objects.filter(pk=pk).annotate(event_count=Count("events")), (uuid.UUID,)
    )
    [prepared] = counted.all(job.pk)
    assert prepared.event_count == Job.objects.annotate(event_count=Count("events")).get(pk=job.pk).event_count >= 1


def test_a_string_argument_finds_what_the_orms_filter_finds(job):
    """A subnet by its slug (every submit), with its license, as the ORM reads it; a slug
    with a NUL character, which PostgreSQL's text cannot hold, is refused as invalid."""
    by_slug = PreparedQuery(lambda slug: Subnet.objects.filter(slug=slug).select_related("license"), (str,))
    [prepared] = by_slug.all(job.subnet.slug)
    orm = Subnet.objects.select_related("license").get(slug=job.subnet.slug)
    assert fields_of(prepared) == fields_of(orm)
    assert by_slug.all(job.subnet.slug + "-other") == []
    assert by_slug.all("prepared-marker-" + uuid.uuid4().hex) == []  # a value shaped like the marker is an argument
    with pytest.raises(ValidationError):
        by_slug.all("nul\x00slug")
    with pytest.raises(ValidationError):
        by_slug.all(7)


@pytest.mark.django_db(transaction=True)
def test_a_statement_is_compiled_once_whichever_thread_runs_it(job):
    """Django's ASGI handler runs each request's sync code on a thread of its own (asgiref's
    executor per request): a form compiled per thread was compiled again on every request."""
    built: list[object] = []

    def by_pk(pk):
        built.append(pk)
        return Job.objects.filter(pk=pk).select_related("subnet")

    def job_expiry(pk, expires_at):
        built.append(pk)
        return Job.objects.filter(pk=pk), {"expires_at": expires_at}

    query = PreparedQuery(by_pk, (uuid.UUID,))
    update = PreparedUpdate(job_expiry, (uuid.UUID, datetime))
    found: list[tuple[uuid.UUID, str, int]] = []

    def request() -> None:
        try:
            [row] = query.all(job.pk)
            found.append((row.pk, row.subnet.slug, update.run(job.pk, job.expires_at)))
        finally:
            connections.close_all()

    for _ in range(3):
        thread = threading.Thread(target=request)
        thread.start()
        thread.join(10)
    assert found == [(job.pk, job.subnet.slug, 1)] * 3
    assert len(built) == 2  # one compile of each statement, for all three threads


def test_an_integer_columns_argument_is_bound_as_the_orm_binds_it_and_compiled_once(job):
    """Django's psycopg backend wraps a value for an integer column in psycopg's Int4: the
    marker was not found among the parameters, and the statement (a settled node's
    reputation, two per job) was built by the ORM on every call."""
    node = online_node(job.subnet).node
    built: list[object] = []

    def counters(pk, agreed, failed):
        built.append(pk)
        return Node.objects.filter(pk=pk), {"jobs_agreed": agreed, "jobs_failed": failed}

    update = PreparedUpdate(counters, (uuid.UUID, int, int))
    for agreed in (3, 4, 2**31 - 1):
        assert update.run(node.pk, agreed, 1) == 1
        node.refresh_from_db()
        assert (node.jobs_agreed, node.jobs_failed) == (agreed, 1)
    assert len(built) == 1
    with pytest.raises(DatabaseError):  # out of the column's range, as the ORM's update refuses it
        with transaction.atomic():
            update.run(node.pk, 2**31, 1)


def test_prepared_rows_are_what_the_orms_values_list_reads_compiled_once(job):
    """The dispatcher's reads of every online node's queue (registry.routing_index.offer_slots)
    run on every pass: a values_list with a join, and one grouped with an annotation."""
    online_node(job.subnet)
    built: list[object] = []

    def links(subnet_id):
        built.append(subnet_id)
        return NodeSubnet.objects.filter(subnet_id=subnet_id, node__is_online=True).values_list(
            "node_id", "items_per_s", "node__jobs_agreed", "subnet__escrow_required_micro"
        ).order_by("node__created_at")

    def per_state(subnet_id):
        built.append(subnet_id)
        return Job.objects.filter(subnet_id=subnet_id).values("state").annotate(jobs=Count("pk")).values_list("state", "jobs")

    prepared_links, prepared_states = PreparedRows(links, (int,)), PreparedRows(per_state, (int,))
    for _ in range(2):
        assert prepared_links.all(job.subnet_id) == list(links(job.subnet_id))
        assert sorted(prepared_states.all(job.subnet_id)) == sorted(per_state(job.subnet_id)) == [(job.state, 1)]
    assert all(isinstance(row[0], uuid.UUID) for row in prepared_links.all(job.subnet_id))  # converted as the ORM does
    assert len(built) == 2 + 4  # one compile each; the rest are the ORM's own reads above
    with pytest.raises(TypeError):
        PreparedRows(lambda pk: Job.objects.filter(subnet_id=pk).values_list("pk", flat=True), (int,)).all(job.subnet_id)


def test_a_single_submissions_repeat_check_is_compiled_once(job, monkeypatch):
    # Before, the ORM built this query anew on every single submission.
    compiled = statements_compiled(monkeypatch, SQLCompiler)
    for _ in range(2):
        again, created = job_submit(user=job.user, subnet_slug=job.subnet.slug, inputs={"texts": ["prepared"]}, idempotency_key="p")
        assert (again.pk, created) == (job.pk, False)

    repeat_checks = [sql for sql in compiled if '"idempotency_key"' in sql and sql.startswith("SELECT")]
    assert len(repeat_checks) <= 1  # the first call may compile it; the second does not
    other, created = job_submit(user=job.user, subnet_slug=job.subnet.slug, inputs={"texts": ["x"]}, idempotency_key="q")
    assert created and other.pk != job.pk


def test_a_single_submissions_data_terms_check_is_compiled_once(job, monkeypatch):
    # Before, the ORM built "which of these subnets' terms has this user acknowledged?" anew
    # on every single submission.
    compiled = statements_compiled(monkeypatch, SQLCompiler)
    for key in ("d1", "d2", "d3"):
        _, created = job_submit(user=job.user, subnet_slug=job.subnet.slug, inputs={"texts": [key]}, idempotency_key=key)
        assert created

    acknowledgement_reads = [sql for sql in compiled if "dataacknowledgement" in sql.lower() and sql.startswith("SELECT")]
    assert len(acknowledgement_reads) <= 1  # the first call may compile it; the others do not


def test_a_pairs_agreement_statistics_update_is_compiled_once(monkeypatch):
    # Before, the ORM built the F()/Least() update anew for every verified job.
    from registry.models import AgreementStat
    from registry.verify import _agreement_add

    subnet = SubnetFactory()
    _agreement_add(subnet, "cpu", "gpu", True, 0.99)  # the row is made; the update may be compiled
    compiled = statements_compiled(monkeypatch, SQLUpdateCompiler)
    for passed, worst in [(False, 0.5), (True, 0.97)]:
        _agreement_add(subnet, "cpu", "gpu", passed, worst)
    _agreement_add(subnet, "cpu", "wasm", True, 0.9)  # a new pair: its row is made first

    updates = [sql for sql in compiled if sql.startswith("UPDATE") and "agreementstat" in sql.lower()]
    assert updates == []  # compiled before; on the ORM, one build per call
    stats = {(s.env_a, s.env_b): s for s in AgreementStat.objects.filter(subnet=subnet)}
    pair = stats[("cpu", "gpu")]
    assert (pair.samples, pair.passed, pair.min_similarity) == (3, 2, 0.5)
    assert pair.sum_similarity == pytest.approx(0.99 + 0.5 + 0.97)
    new = stats[("cpu", "wasm")]
    assert (new.samples, new.passed, new.sum_similarity, new.min_similarity) == (1, 1, 0.9, 0.9)


def test_a_prepared_update_writes_a_json_argument_as_the_orm_does(job):
    update = PreparedUpdate(lambda pk, verification: (Job.objects.filter(pk=pk), {"verification": verification}), (uuid.UUID, dict))
    for verification in [{"method": "cosine", "worst": 0.99, "nested": {"a": [1, 2]}}, {"other": "é\u2028", "n": None}]:
        assert update.run(job.pk, verification) == 1
        job.refresh_from_db()
        assert job.verification == verification
    with pytest.raises(ValidationError):
        update.run(job.pk, ["a list is not this statement's kind"])


def test_a_jobs_transitions_are_written_by_statements_compiled_once(monkeypatch):
    # Before, each transition's job.save(update_fields=...) was built by the ORM anew.
    from ledger import services as ledger
    from registry.jobs import job_transition
    from registry.models import JobEvent, JobState

    subnet = SubnetFactory()
    online_node(subnet)
    user = user_with_credits(10)
    jobs = [job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": [k]}, idempotency_key=k)[0] for k in "ab"]

    def walk(job):
        with transaction.atomic():
            locked = job_locked(job.pk)
            job_transition(locked, JobState.DISPATCHED, detail="nodes x")
            job_transition(locked, JobState.VERIFYING, detail="both results in")
            job_transition(locked, JobState.FAILED, detail="no majority", failure_reason="no majority", verification={"worst": str(job.pk)})
            ledger.job_release(job_id=job.pk, user=job.user, amount=job.price_micro, reason="no majority")

    walk(jobs[0])  # the statements may be compiled here
    compiled = statements_compiled(monkeypatch, SQLUpdateCompiler)
    walk(jobs[1])
    assert [sql for sql in compiled if 'UPDATE "registry_job"' in sql] == []
    for job in jobs:
        job.refresh_from_db()
        assert (job.state, job.failure_reason, job.verification) == (JobState.FAILED, "no majority", {"worst": str(job.pk)})
        assert None not in (job.dispatched_at, job.verifying_at, job.finished_at)
        events = list(JobEvent.objects.filter(job=job).order_by("pk").values_list("to_state", flat=True))
        assert events == [JobState.QUEUED, JobState.DISPATCHED, JobState.VERIFYING, JobState.FAILED]


def test_fields_save_writes_what_model_save_writes(job, monkeypatch):
    from registry.models import Assignment, AssignmentRole
    from registry.prepared import fields_save

    node = online_node(job.subnet).node
    assignment = Assignment.objects.create(job=job, node=node, role=AssignmentRole.A)
    assignment.state, assignment.result, assignment.result_shape = "submitted", b"\x00\x01bytes", [4, 384]
    assignment.result_hash, assignment.elapsed_ms, assignment.submitted_at = "ab" * 32, 17, timezone.now()
    names = ("state", "result", "result_shape", "result_hash", "elapsed_ms", "submitted_at")
    fields_save(assignment, names)
    stored = Assignment.objects.get(pk=assignment.pk)
    assert [getattr(stored, name) for name in names[:1]] + [bytes(stored.result)] + [
        getattr(stored, name) for name in names[2:]
    ] == [getattr(assignment, name) for name in names]

    saved: list[object] = []
    model_save = Assignment.save
    monkeypatch.setattr(Assignment, "save", lambda self, **kw: saved.append(kw) or model_save(self, **kw))
    assignment.result = None  # a NULL has no kind here: the ORM writes it
    fields_save(assignment, ("result",))
    assert saved == [{"update_fields": ["result"]}] and Assignment.objects.get(pk=assignment.pk).result is None
    assignment.elapsed_ms = 18
    fields_save(assignment, ("elapsed_ms",))
    assert len(saved) == 1 and Assignment.objects.get(pk=assignment.pk).elapsed_ms == 18
    Assignment.objects.filter(pk=assignment.pk).delete()
    with pytest.raises(DatabaseError):
        fields_save(assignment, ("elapsed_ms",))  # as Model.save refuses a row that is gone


def test_a_settlements_writes_are_compiled_once(monkeypatch):
    # Before, the ORM built each of these anew for every job: the assignment's stored result,
    # the job's moves to verifying and settled, the majority marked agreed.
    import numpy as np

    from registry.models import Assignment, JobState
    from tests.factories import served_subnet, settle, unit_vectors

    subnet = served_subnet()
    nodes = [online_node(subnet) for _ in range(3)]
    user = user_with_credits(10)
    vectors = unit_vectors(2)

    def settled(key: str) -> Job:
        job, _ = job_submit(user=user, subnet_slug=subnet.slug, inputs={"texts": ["one", key]}, idempotency_key=key)
        settle(str(job.pk), nodes, vectors, vectors.astype(np.float32))
        return Job.objects.get(pk=job.pk)

    assert settled("first").state == JobState.SETTLED  # the statements may be compiled here
    compiled = statements_compiled(monkeypatch, SQLUpdateCompiler)
    job = settled("second")
    assert job.state == JobState.SETTLED and job.receipt and job.verification
    assert [sql for sql in compiled if 'UPDATE "registry_job"' in sql or 'UPDATE "registry_assignment"' in sql] == []
    states = sorted(Assignment.objects.filter(job=job).values_list("role", "state"))
    assert states == [("A", "agreed"), ("B", "agreed")]
    assert all(a.result_hash and a.signature and a.submitted_at for a in Assignment.objects.filter(job=job))


def test_a_bytes_argument_in_a_wrapper_that_cannot_be_refilled_is_built_by_the_orm():
    # SQLite binds bytes as a memoryview, whose `obj` is the marker but cannot be replaced:
    # the statement is then built by the ORM on every call, as for SQLite's datetimes.
    from psycopg import Binary

    from registry.prepared import _form, _marker

    marker = _marker(bytes)
    assert _form(memoryview(marker), marker) is None
    refill = _form(Binary(marker), marker)
    assert refill is not None and refill(b"\x00result").obj == b"\x00result"


def test_fields_save_of_bytes_alone_writes_them(job):
    from registry.models import Assignment, AssignmentRole
    from registry.prepared import fields_save

    assignment = Assignment.objects.create(job=job, node=online_node(job.subnet).node, role=AssignmentRole.A)
    for payload in (b"\x00first", b"second\xff"):
        assignment.result = payload
        fields_save(assignment, ("result",))
        assert bytes(Assignment.objects.get(pk=assignment.pk).result) == payload
