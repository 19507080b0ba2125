"""Django's PostgreSQL backend, whose pool lends a connection without a round trip.

Django gives psycopg's pool the health check `ConnectionPool.check_connection`, an empty
query before every loan: under daphne each request runs on a thread of its own and each
node message on a database thread that hands its connection back, so every one paid a round
trip (4 % of daphne's CPU in bench/throughput.py). A backend that ends (a server restart,
pg_terminate_backend, a crash) sends its error and closes the socket, which makes the socket
readable: only then is the connection checked with a query, and closed if it fails. A
connection that nothing was sent to since it went idle is lent as it is."""

from __future__ import annotations

import select
from typing import Any

import psycopg
from django.db.backends.postgresql import base
from psycopg_pool import ConnectionPool


def _went_quiet(connection: psycopg.Connection) -> bool:
    """Whether the idle connection's socket holds nothing to read (no error, no EOF)."""
    if connection.closed or connection.broken:
        return False
    poller = select.poll()  # not select(): daphne holds thousands of sockets, past FD_SETSIZE
    poller.register(connection.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
    return not poller.poll(0)


class DatabaseWrapper(base.DatabaseWrapper):
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        if not self.pool:
            return super().get_new_connection(conn_params)
        # Each dead connection found is closed and handed back (the pool replaces it), so
        # this ends within the pool's size.
        for _ in range(self.pool.max_size):
            connection = super().get_new_connection(conn_params)
            if _went_quiet(connection):
                return connection
            try:
                ConnectionPool.check_connection(connection)  # something to read: say so with a query
                return connection
            except psycopg.Error:
                connection.close()
                self.pool.putconn(connection)
        return super().get_new_connection(conn_params)
