"""Hostile nodes, protocol hygiene (issue 11, item 3): out-of-range numbers get an `error`
with a code instead of crashing the socket, session keys are single-use, a public key is
one key whatever its base64 spelling, oversized frames and floods close the socket with
documented codes, and heartbeats update presence in the cache, not a database row."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.utils import timezone
from rest_framework.authtoken.models import Token

from bim_core import protocol
from bim_core.errors import ServiceError
from registry import presence, sweeper
from registry.models import Assignment, Node, SessionKey, Strike
from registry.routing_index import presence_cache_started
from subnets.models import EulaAcceptance
from tests.factories import SubnetFactory, UserFactory, online_node, result_message, unit_vectors
from tests.registry.test_benchmarks import reference_for
from tests.registry.test_node_socket import TEXTS, closed_with, connect, handshake, paired_job, ready, run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


async def welcomed(keys, subnet):
    socket = await handshake(keys, subnet)
    assert (await socket.receive_json_from(timeout=5))["type"] == "welcome"
    return socket


async def answers_until_close(socket) -> tuple[list[str], int]:
    """What the registry answered (an error's code, else the type) until it closed, and the close code."""
    kinds = []
    while True:
        output = await socket.receive_output(timeout=5)
        if output["type"] == "websocket.close":
            return kinds, output.get("code")
        message = json.loads(output["text"])
        kinds.append(message.get("code") or message["type"])


async def still_open(socket) -> None:
    await socket.send_json_to({"type": "heartbeat"})
    assert (await socket.receive_json_from(timeout=5))["type"] == "pong"


# ---------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("max_concurrent", "code"),
    [("0", "out_of_range"), (str(2**31), "out_of_range"), ("-3", "out_of_range"), ('"many"', "bad_message"),
     ("1.5", "bad_message"), ("true", "bad_message"), ("NaN", "bad_message"), ("1e400", "bad_message")],
)
def test_a_ready_with_an_impossible_max_concurrent_gets_an_error_and_the_socket_stays(max_concurrent, code):
    subnet = SubnetFactory()
    keys = online_node(subnet, ready=False)

    async def scenario():
        socket = await welcomed(keys, subnet)
        frame = f'{{"type": "ready", "subnet": "{subnet.slug}", "model_checksum": "{subnet.model_checksum}", ' \
                f'"max_concurrent": {max_concurrent}}}'
        await socket.send_to(text_data=frame)
        answer = await socket.receive_json_from(timeout=5)
        assert (answer["type"], answer["code"]) == ("error", code)
        await still_open(socket)
        await socket.disconnect()

    run(scenario)


@pytest.mark.parametrize("timings", ["[NaN, 1.0, 1.0]", "[Infinity, 1.0, 1.0]", "[1e30, 1.0, 1.0]", "[-1.0, 1.0, 1.0]",
                                     '["fast", 1.0, 1.0]', "[]", "7"])
def test_a_benchmark_answer_with_impossible_timings_gets_an_error(timings):
    subnet = SubnetFactory()
    reference = reference_for(subnet)
    keys = online_node(subnet, ready=False, benchmarked=False)

    async def scenario():
        socket = await handshake(keys, subnet)
        await ready(socket, subnet)
        benchmark = await socket.receive_json_from(timeout=5)
        assert benchmark["type"] == "benchmark"
        payload = protocol.encode_vectors(reference)
        message = {
            "type": "benchmark_result", "benchmark_id": benchmark["benchmark_id"], "encoding": "f32le",
            "data": protocol.b64encode(payload), "result_hash": protocol.sha256_hex(payload),
            "shape": list(reference.shape), "timings_ms": "TIMINGS", "signature": "AAAA",
        }
        await socket.send_to(text_data=json.dumps(message).replace('"TIMINGS"', timings))
        answer = await socket.receive_json_from(timeout=5)
        assert answer["type"] == "error"
        assert answer["code"] in ("out_of_range", "bad_message")
        assert answer["code"] == ("bad_message" if timings in ('["fast", 1.0, 1.0]', "[]", "7") else "out_of_range")
        await still_open(socket)
        await socket.disconnect()

    run(scenario)


@pytest.mark.parametrize(("elapsed", "code"), [("1e30", "out_of_range"), ("-5", "out_of_range"), ("NaN", "bad_message")])
def test_a_result_with_an_impossible_elapsed_ms_gets_an_error(elapsed, code):
    subnet = SubnetFactory()

    async def scenario():
        job, offers = await paired_job(subnet)
        keys, socket, offer = offers["A"]
        assignment = await database_sync_to_async(Assignment.objects.get)(pk=offer["assignment_id"])
        message = await database_sync_to_async(result_message)(keys, job, assignment, unit_vectors(len(TEXTS)))
        message["elapsed_ms"] = "ELAPSED"
        await socket.send_to(text_data=json.dumps(message).replace('"ELAPSED"', elapsed))
        answer = await socket.receive_json_from(timeout=5)
        assert (answer["type"], answer["code"], answer["assignment_id"]) == ("error", code, str(assignment.id))
        await still_open(socket)
        for _, other, _ in offers.values():
            await other.disconnect()

    run(scenario)


# ---------------------------------------------------------------- keys


def _hello_with(keys, nonce: str, session_pub: str) -> dict:
    signed = protocol.hello_message(node_id=str(keys.node.pk), nonce=nonce, session_key_pub=session_pub)
    return {"type": "hello", "node_id": str(keys.node.pk), "session_key_pub": session_pub,
            "signature": protocol.sign(keys.long_term, signed), "env": {}}


def test_a_session_key_is_refused_the_second_time_by_the_same_or_another_node():
    subnet = SubnetFactory()
    first, second = online_node(subnet, ready=False), online_node(subnet, ready=False)

    async def scenario():
        socket = await welcomed(first, subnet)  # the session key is now used
        await socket.disconnect()
        for keys in (first, second):
            token = await database_sync_to_async(lambda k=keys: Token.objects.get_or_create(user=k.node.owner)[0].key)()
            again = await connect(token)
            challenge = await again.receive_json_from(timeout=5)
            # The same key in another spelling is the same key.
            raw = protocol.b64decode(protocol.public_key_b64(first.session))
            await again.send_json_to(_hello_with(keys, challenge["nonce"], protocol.b64encode(raw)))
            assert await closed_with(again) == protocol.CLOSE_SESSION_KEY_REUSED

    run(scenario)


def test_session_keys_are_remembered_for_the_retention_period_then_pruned(settings):
    settings.SESSION_KEY_RETENTION_DAYS = 30
    node = online_node(SubnetFactory(), ready=False).node
    keys = [SessionKey.objects.create(key=protocol.public_key_b64(protocol.new_private_key()), node=node) for _ in range(3)]
    SessionKey.objects.filter(pk=keys[0].pk).update(used_at=timezone.now() - timedelta(days=31))
    assert presence.session_keys_prune() == 1
    assert set(SessionKey.objects.filter(node=node).values_list("pk", flat=True)) >= {keys[1].pk, keys[2].pk}
    assert not SessionKey.objects.filter(pk=keys[0].pk).exists()


def _respelled(public_key: str) -> str:
    """The same 32 bytes with the two unused trailing bits set: strict base64 still decodes it."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(public_key[-2])
    other = public_key[:-2] + alphabet[last | 0b11] + "="
    assert other != public_key and protocol.b64decode(other) == protocol.b64decode(public_key)
    return other


def _register(owner, public_key, subnet):
    return presence.node_register(owner=owner, public_key=public_key, name="n", env={}, subnet_slugs=[subnet.slug], ip=None)


def test_a_public_key_is_one_key_whatever_its_base64_spelling():
    subnet = SubnetFactory()
    alice, mallory = UserFactory(), UserFactory()
    for user in (alice, mallory):
        EulaAcceptance.objects.create(user=user, subnet=subnet, license=subnet.license, license_version=subnet.license.version)
    canonical = protocol.public_key_b64(protocol.new_private_key())
    node, created = _register(alice, canonical, subnet)
    assert created
    with pytest.raises(ServiceError) as taken:
        _register(mallory, _respelled(canonical), subnet)
    assert taken.value.code == "public_key_taken"
    again, created = _register(alice, _respelled(canonical), subnet)
    assert (again.pk, created) == (node.pk, False)
    assert Node.objects.get().public_key == canonical


# ---------------------------------------------------------------- size and rate


def test_an_oversized_frame_the_transport_let_through_closes_with_4009(settings):
    settings.NODE_MAX_MESSAGE_BYTES = 4096
    subnet = SubnetFactory()
    keys = online_node(subnet, ready=False)

    async def scenario():
        socket = await welcomed(keys, subnet)
        await socket.send_to(text_data=json.dumps({"type": "heartbeat", "padding": "x" * 5000}))
        # 1009 is the transport's to send (tests/site/test_serve.py); an application may not.
        assert await closed_with(socket) == protocol.CLOSE_MESSAGE_TOO_BIG_APP == 4009

    run(scenario)
    # Cut off for what it sent, not just disconnected: it cannot come back blameless.
    assert list(Strike.objects.filter(node=keys.node).values_list("reason", flat=True)) == [
        "sent a frame over the size limit"
    ]


def test_a_flood_gets_an_error_then_a_close(settings):
    settings.NODE_RATE_PER_S = 0.01
    settings.NODE_RATE_BURST = 5
    settings.NODE_HEARTBEAT_COST = 1  # counted as any message here; priced below
    subnet = SubnetFactory()
    keys = online_node(subnet, ready=False)

    async def scenario():
        socket = await welcomed(keys, subnet)  # the hello took one token
        for _ in range(20):
            await socket.send_json_to({"type": "heartbeat"})
        return await answers_until_close(socket)

    kinds, code = run(scenario)
    assert kinds == ["pong"] * 4 + ["rate_limited"]
    assert code == protocol.CLOSE_RATE_LIMITED
    assert list(Strike.objects.filter(node=keys.node).values_list("reason", flat=True)) == [
        "flooded the registry with messages"
    ]


def test_a_heartbeat_flood_at_the_default_budget_is_cut_off_after_a_few_pongs():
    """A heartbeat costs NODE_HEARTBEAT_COST tokens: a flood of them is served a handful of
    times, not at the full message rate, and cut off before the node sends a thousand."""
    subnet = SubnetFactory()
    keys = online_node(subnet, ready=False)

    async def scenario():
        socket = await welcomed(keys, subnet)
        for _ in range(1000):
            await socket.send_json_to({"type": "heartbeat"})
        return await answers_until_close(socket)

    kinds, code = run(scenario)
    assert code == protocol.CLOSE_RATE_LIMITED
    assert kinds.count("pong") <= 8 and kinds[-1] == "rate_limited"


# ---------------------------------------------------------------- presence


def test_heartbeats_update_presence_in_the_cache_not_the_database_and_the_sweeper_reads_it(settings):
    settings.NODE_LAST_SEEN_DB_INTERVAL_S = 3600
    subnet = SubnetFactory()
    keys = online_node(subnet, ready=False)
    silent = online_node(subnet, ready=False)
    long_ago = timezone.now() - timedelta(seconds=settings.NODE_STALE_S * 3)
    presence_cache_started(long_ago)  # the cache has kept presence long enough to know who is silent

    async def scenario():
        socket = await welcomed(keys, subnet)
        await database_sync_to_async(lambda: Node.objects.filter(pk__in=[keys.node.pk, silent.node.pk]).update(last_seen=long_ago))()
        for _ in range(3):
            await still_open(socket)
        stored = await database_sync_to_async(lambda: Node.objects.get(pk=keys.node.pk).last_seen)()
        assert stored == long_ago  # no row written per heartbeat
        seen = await database_sync_to_async(presence.node_last_seen)(keys.node.pk)
        assert seen is not None and seen > timezone.now() - timedelta(seconds=5)
        result = await database_sync_to_async(sweeper.sweep)()
        await socket.disconnect()
        return result

    assert run(scenario)["nodes_dropped"] == 1
    assert not Node.objects.get(pk=silent.node.pk).is_online  # silent in the cache and the row
