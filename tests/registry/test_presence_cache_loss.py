"""Presence survives the cache losing it (issue 11: a registry restart is not the nodes'
fault). Heartbeats live in the cache and reach the row only every
NODE_LAST_SEEN_DB_INTERVAL_S, so when Redis restarts empty a live node's row may look
minutes old: the sweeper must not drop it, and a node the registry did drop gets a close
it reconnects from, not the "replaced" close a node treats as fatal."""

from __future__ import annotations

from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from django.core.cache import cache
from django.utils import timezone

from bim_core import protocol
from bim_node.session import FATAL_CLOSE_CODES
from registry import presence, sweeper
from registry.models import Node
from registry.routing_index import presence_cache_started
from tests.factories import SubnetFactory, online_node
from tests.registry.test_node_socket import closed_with, run
from tests.registry.test_protocol_hygiene import still_open, welcomed

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


def test_live_nodes_are_not_dropped_when_the_cache_restarts_empty(settings):
    subnet = SubnetFactory()
    keys = online_node(subnet, ready=False)

    async def scenario():
        socket = await welcomed(keys, subnet)
        await still_open(socket)
        # The row was last written minutes ago, as it is between NODE_LAST_SEEN_DB_INTERVAL_S writes.
        minutes_ago = timezone.now() - timedelta(seconds=settings.NODE_LAST_SEEN_DB_INTERVAL_S - 10)
        await database_sync_to_async(lambda: Node.objects.filter(pk=keys.node.pk).update(last_seen=minutes_ago))()
        await database_sync_to_async(cache.clear)()  # Redis restarted empty
        dropped = (await database_sync_to_async(sweeper.sweep)())["nodes_dropped"]
        online = await database_sync_to_async(lambda: Node.objects.get(pk=keys.node.pk).is_online)()
        await still_open(socket)  # the next heartbeat puts it back in the cache
        await socket.disconnect()
        return dropped, online

    assert run(scenario) == (0, True)


def test_a_node_silent_since_the_cache_restarted_is_dropped_once_the_stale_limit_passed(settings):
    subnet = SubnetFactory()
    silent = online_node(subnet, ready=False)
    Node.objects.filter(pk=silent.node.pk).update(last_seen=timezone.now() - timedelta(seconds=120))
    cache.clear()
    assert sweeper.sweep()["nodes_dropped"] == 0  # the cache knows too little yet
    presence_cache_started(timezone.now() - timedelta(seconds=settings.NODE_STALE_S + 1))
    assert sweeper.sweep()["nodes_dropped"] == 1
    assert not Node.objects.get(pk=silent.node.pk).is_online


def test_a_heartbeat_on_a_session_the_registry_ended_gets_a_close_the_node_reconnects_from():
    subnet = SubnetFactory()
    keys = online_node(subnet, ready=False)

    async def scenario():
        socket = await welcomed(keys, subnet)
        channel = await database_sync_to_async(lambda: Node.objects.get(pk=keys.node.pk).channel_name)()
        await database_sync_to_async(presence.node_disconnect)(node_id=keys.node.pk, channel_name=channel)
        await socket.send_json_to({"type": "heartbeat"})
        return await closed_with(socket)

    code = run(scenario)
    assert code == protocol.CLOSE_SESSION_ENDED
    assert code not in FATAL_CLOSE_CODES
