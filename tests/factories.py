"""Factories for tests: users, subnets, nodes with real keys, and signed results."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import factory
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone

from bim_core import families, protocol
from bim_core.money import MICRO
from ledger.models import PayoutDestination
from ledger.services import credits_top_up
from registry import dispatch, presence, routing_index, takeback, verify
from registry.asn import ip_block
from registry.models import Assignment, Job, Node, NodeSubnet
from registry.results import result_record
from subnets.models import BenchmarkReference, EulaAcceptance, License, Subnet, UserDataAcknowledgement

# Paying users made by `user_with_credits` have acknowledged the data-handling terms of
# every subnet, those made before them and after (SubnetFactory): tests of other behaviours
# submit jobs as they did. Tests of the refusal make their user with
# acknowledge_data_terms=False (tests/registry/test_data_terms_refusal.py).
_ACKNOWLEDGING_USERS: set[int] = set()


def data_terms_acknowledge_all(users: Any, subnets: Any) -> None:
    """Record acknowledgements of these subnets' current terms by these users (as
    subnets.data_terms.data_terms_acknowledge would, without the round trip)."""
    UserDataAcknowledgement.objects.bulk_create(
        [
            UserDataAcknowledgement(user=user, subnet=subnet, terms_version=subnet.data_terms_version)
            for user in users
            for subnet in subnets
        ],
        ignore_conflicts=True,
    )


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()

    username = factory.Sequence(lambda n: f"user{n}")


class LicenseFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = License
        django_get_or_create = ("slug", "version")

    slug = "apache-2.0"
    version = "2.0"
    name = "Apache License 2.0"


class SubnetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Subnet
        skip_postgeneration_save = True

    slug = factory.Sequence(lambda n: f"embed-{n}")
    name = "test embeddings"
    task_type = "embedding"
    model_id = "test/minilm"
    model_checksum = "ab" * 32
    runtime_id = "onnxruntime/test"
    tolerances = {"cosine_min": 0.9999, "norm_tolerance": 0.001}
    preprocessing = {"max_tokens": 256, "pooling": "mean", "normalize": True}
    price_per_call_micro = 333
    price_per_item_micro = 1000
    escrow_share_bp = 1000
    escrow_required_micro = 1_000_000
    latency_ms = 60_000
    license = factory.SubFactory(LicenseFactory)
    # Tests mostly need a serving subnet; the lifecycle's own tests start from a draft.
    state = Subnet.State.ACTIVE

    @factory.post_generation
    def data_terms_acknowledged(subnet: Subnet, create: bool, extracted: Any, **kwargs: Any) -> None:
        if create and _ACKNOWLEDGING_USERS:
            users = list(get_user_model().objects.filter(pk__in=_ACKNOWLEDGING_USERS))
            # Earlier tests' users were rolled back or flushed: forget them.
            _ACKNOWLEDGING_USERS.intersection_update(user.pk for user in users)
            data_terms_acknowledge_all(users, [subnet])


def user_with_credits(credits: int = 10, *, acknowledge_data_terms: bool = True, **kwargs: Any):
    """A user with `credits` who (unless told otherwise) acknowledged every subnet's data
    terms, now and later: see _ACKNOWLEDGING_USERS."""
    user = UserFactory(**kwargs)
    if credits:
        credits_top_up(user=user, amount=credits * MICRO, idempotency_key=f"test:{user.pk}")
    if acknowledge_data_terms:
        _ACKNOWLEDGING_USERS.add(user.pk)
        data_terms_acknowledge_all([user], Subnet.objects.all())
    else:
        _ACKNOWLEDGING_USERS.discard(user.pk)
    return user


@dataclass
class NodeKeys:
    """A node and the private keys a real node would hold."""

    node: Node
    long_term: Ed25519PrivateKey
    session: Ed25519PrivateKey


_addresses = itertools.count(1)


TEST_IBAN = "DE89370400440532013000"  # the standard example IBAN: valid check digits


def payout_destination(user: Any, address: str = TEST_IBAN) -> PayoutDestination:
    """Where the user's withdrawals go (every node owner here has one, as the Earnings page
    requires before a withdrawal)."""
    destination, _ = PayoutDestination.objects.get_or_create(user=user, defaults={"method": "iban", "address": address})
    return destination


def online_node(
    subnet: Subnet, owner=None, *, ready: bool = True, benchmarked: bool = True, ip: str | None = None, **node_fields: Any
) -> NodeKeys:
    """A registered node with a live, certified session, by default ready for `subnet` and
    with a passed benchmark (score 1). Each node gets its own /24 unless `ip` says otherwise."""
    if ip is None:
        n = next(_addresses)
        ip = f"10.{(n >> 8) & 255}.{n & 255}.7"
    owner = owner or UserFactory()
    EulaAcceptance.objects.get_or_create(
        user=owner, subnet=subnet, license=subnet.license, defaults={"license_version": subnet.license.version}
    )
    payout_destination(owner)
    long_term, session = protocol.new_private_key(), protocol.new_private_key()
    node = Node.objects.create(owner=owner, name=f"node-{owner.username}", public_key=protocol.public_key_b64(long_term))
    nonce = protocol.b64encode(b"n" * 32)
    session_pub = protocol.public_key_b64(session)
    Node.objects.filter(pk=node.pk).update(
        is_online=True,
        channel_name=f"test.{node.pk}",
        session_key_pub=session_pub,
        session_nonce=nonce,
        session_cert=protocol.sign(long_term, protocol.hello_message(node_id=str(node.pk), nonce=nonce, session_key_pub=session_pub)),
        last_seen=timezone.now(),
        connected_at=timezone.now(),
        ip=ip,
        ip_block=ip_block(ip),
        **node_fields,
    )
    NodeSubnet.objects.create(
        node=node,
        subnet=subnet,
        ready_at=timezone.now() if ready else None,
        score=1.0 if benchmarked else 0.0,
        items_per_s=30.0 if benchmarked else None,
        latency_p50_ms=250.0 if benchmarked else None,
        latency_p95_ms=300.0 if benchmarked else None,
        benchmarked_at=timezone.now() if benchmarked else None,
    )
    node.refresh_from_db()
    routing_index.index_forget()  # rows written behind presence's back: the index must rebuild
    return NodeKeys(node=node, long_term=long_term, session=session)


def unit_vectors(count: int, dim: int = 384, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def result_message(
    keys: NodeKeys, job: Job, assignment: Assignment, result: Any, **overrides: Any
) -> dict[str, Any]:
    """The `result` message an honest node would send with `result` (vectors, a generation,
    pixels: what the job's task family encodes); overrides forge single fields."""
    family = families.family_for(job.contract["task_type"])
    payload, shape = family.encode_result(result)
    fields = {
        "input_hash": job.contract["input_hash"],
        "result_hash": protocol.sha256_hex(payload),
        "shape": list(shape),
    }
    fields.update({k: v for k, v in overrides.items() if k in fields})
    signed = protocol.result_message(
        job_id=str(job.id),
        assignment_id=str(assignment.id),
        contract_hash=job.contract_hash,
        input_hash=fields["input_hash"],
        result_hash=fields["result_hash"],
        shape=tuple(fields["shape"]),
    )
    message = {
        "type": "result",
        "assignment_id": str(assignment.id),
        "job_id": str(job.id),
        "encoding": family.encoding,
        "data": protocol.b64encode(payload),
        "elapsed_ms": 5,
        "signature": protocol.sign(overrides.get("signing_key", keys.session), signed),
        **fields,
    }
    message.update({k: v for k, v in overrides.items() if k in ("data", "job_id", "assignment_id", "signature")})
    return message


def answer(job_id: object, nodes, vectors_a: np.ndarray, vectors_b: np.ndarray) -> None:
    """Dispatch a submitted job and record both nodes' signed results (verification is
    the caller's, or in place where the settings say so)."""
    job = Job.objects.get(pk=job_id)
    dispatch.job_dispatch(job_id=job.id)
    by_node = {n.node.pk: n for n in nodes}
    for assignment in job.assignments.all():
        vectors = vectors_a if assignment.role == "A" else vectors_b
        keys = by_node[assignment.node_id]
        result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, vectors))


def settle(job_id: str, nodes, vectors_a: np.ndarray, vectors_b: np.ndarray) -> None:
    """Run a submitted job through dispatch, both nodes' signed results and verification."""
    answer(job_id, nodes, vectors_a, vectors_b)
    verify.job_verify(job_id=job_id)


def node_vanish(node_id: object) -> None:
    """The node's socket closes and it stays away past the reconnect grace: its open
    assignments are taken back (their jobs' dispatch is queued on commit)."""
    presence.node_disconnect(node_id=node_id, channel_name=f"test.{node_id}")
    away = timezone.now() - timedelta(seconds=settings.NODE_RECONNECT_GRACE_S + 1)
    Node.objects.filter(pk=node_id).update(last_seen=away)
    takeback.assignments_lose_disconnected()


def served_subnet(**fields: Any) -> Subnet:
    """A subnet with one connected node that is not ready yet: the registry takes jobs for
    it (there is capacity, registry.submit) and they stay queued (nobody is routable)."""
    subnet = SubnetFactory(**fields)
    online_node(subnet, ready=False)
    return subnet


def benchmark_reference(subnet: Subnet, checksum: str | None = None) -> BenchmarkReference:
    """A benchmark reference row for the subnet's model (what activation requires); its
    answer is a placeholder: tests that run a real benchmark compute the real one."""
    return BenchmarkReference.objects.create(
        subnet=subnet, inputs={"texts": ["x"]}, result=b"", shape=[0, 384], model_checksum=checksum or subnet.model_checksum
    )
