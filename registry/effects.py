"""Side effects of registry writes, always deferred to commit: a task or a node never
sees state that may still roll back."""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync
from celery import current_app
from channels.layers import get_channel_layer
from django.db import transaction


def send_to_node(node_id: object, event: dict[str, Any]) -> None:
    """After commit, deliver a channel-layer event to the node's websocket group."""
    transaction.on_commit(lambda: async_to_sync(get_channel_layer().group_send)(f"node.{node_id}", event))


def queue_task(task_name: str, *args: str) -> None:
    """After commit, queue a registry task (run inline in eager mode).

    The task is looked up by name in Celery's registry, the way `send_task` addresses it,
    so the services that queue tasks never import the tasks that call them."""
    task = current_app.tasks[f"registry.tasks.{task_name}"]
    transaction.on_commit(lambda: task.delay(*args))
