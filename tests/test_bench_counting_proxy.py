"""bench/counting_proxy.py, which bench/bandwidth.py reads every figure off: it counts each
byte once, per party and direction, passes them unchanged, and connects upstream from the
client's own address (the registry's routing tells nodes apart by it)."""

from __future__ import annotations

import socket
import threading

from bench.counting_proxy import CountingProxy, total


def echo_server() -> tuple[socket.socket, list[str]]:
    """Echoes each connection back; records the address each one came from."""
    server = socket.create_server(("127.0.0.1", 0))
    peers: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, address = server.accept()
            except OSError:
                return
            peers.append(address[0])
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return server, peers


def exchange(port: int, payload: bytes, source: str = "127.0.0.1") -> bytes:
    with socket.create_connection(("127.0.0.1", port), source_address=(source, 0)) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        received = b""
        while data := conn.recv(65536):
            received += data
    return received


def test_it_counts_each_byte_once_per_party_and_direction() -> None:
    server, peers = echo_server()
    proxy = CountingProxy(server.getsockname())
    try:
        nodes, users = proxy.listen("node"), proxy.listen("user")
        before = proxy.snapshot()
        payload = bytes(range(256)) * 1000
        assert exchange(nodes, payload, source="127.0.3.1") == payload
        assert exchange(users, b"hello") == b"hello"
        assert proxy.settle(quiet_s=0.1)
        spent = proxy.since(before)
        assert spent["node"] == {"up": len(payload), "down": len(payload), "connections": 1}
        assert spent["user"] == {"up": 5, "down": 5, "connections": 1}
        assert total(spent) == 2 * len(payload) + 10 and total(spent, ("user",)) == 10
        # Upstream, the connection came from the client's address, not the proxy's.
        assert peers == ["127.0.3.1", "127.0.0.1"]
    finally:
        proxy.close()
        server.close()
