"""A hostile contributor node for bench/adversary.py: the simulated node of
`bench/sim_node.py` (real registration, handshake, signatures, precomputed vectors of the
subnet's real model) with one way of cheating or attacking the registry.

Strategies:
  refused         results signed with a key the registry never certified (`bad_signature`)
  silence         accepts every offer and never answers it (heartbeats keep flowing)
  wrong_shape     truncated vectors: 383 of the subnet's 384 dimensions (`bad_shape`)
  forged_timings  correct outputs, benchmark timings claimed at 0.5 ms a run
  oversized       answers each offer with a result padded past the message size limit
  reconnect_storm drops its socket on every offer and reconnects at once
  collude         keeps 288 of 384 dimensions and renormalises: two such nodes of
                  different owners agree with each other exactly and with nobody else
  flood           once in the market, heartbeats as fast as the socket takes them

    python bench/hostile_node.py --strategy silence --registry URL --token TOKEN \
        --subnet minilm-embed --name x-silence --key-file K --vectors V --source-ip 127.0.9.1
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ROOT = Path(__file__).resolve().parent.parent
# bench/ is on sys.path when this runs as a script, and bench/websockets.py would then be
# imported for the websockets library (the node client uses it): off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench import sim_node  # noqa: E402
from bim_core import protocol  # noqa: E402
from bim_node.handshake import send  # noqa: E402
from bim_node.jobs import BenchmarkTask, Job, ServedModel  # noqa: E402
from bim_node.session import NodeClient, _Connection  # noqa: E402

log = logging.getLogger("bench.hostile_node")

STRATEGIES = (
    "refused",
    "silence",
    "wrong_shape",
    "forged_timings",
    "oversized",
    "reconnect_storm",
    "collude",
    "flood",  # last: on one machine the flooder's CPU is taken from everyone else
)
COLLUDE_KEEP_DIMS = 288  # cosine with the honest vector ~0.9: far outside the 0.9999 tolerance
FORGED_RUN_MS = 0.5
# Over the registry's BIM_NODE_MAX_MESSAGE_BYTES (1 MiB - 1 KiB), which bim_site.serve
# gives the transport: refused with a 1009 close before the consumer sees it.
OVERSIZED_BYTES = 1024 * 1024 - 512


@dataclasses.dataclass(frozen=True)
class HostileModel(ServedModel):
    """`ServedModel` whose job results lie the way `strategy` says; the rest is the real
    code. Benchmarks are answered honestly (only their timings may be forged): a node that
    failed them would never be offered a job to cheat on."""

    strategy: str = ""

    def encoded(self, result: Any, inputs: dict[str, Any]) -> tuple[bytes, tuple[int, ...]]:
        if self.strategy == "wrong_shape":
            # Skips the node's own shape check on purpose: the registry must catch it.
            return self.family.encode_result(np.asarray(result)[:, :-1])
        if self.strategy == "collude":
            return super().encoded(colluding(result), inputs)
        return super().encoded(result, inputs)

    def result_message(
        self, job: Job, payload: bytes, shape: tuple[int, ...], elapsed_ms: int, session_key: Ed25519PrivateKey
    ) -> dict[str, Any]:
        if self.strategy == "refused":
            session_key = protocol.new_private_key()  # never certified by this node's hello
        return super().result_message(job, payload, shape, elapsed_ms, session_key)

    def benchmark_result_message(
        self, task: BenchmarkTask, result: Any, timings_ms: list[float], session_key: Ed25519PrivateKey
    ) -> dict[str, Any]:
        if self.strategy == "forged_timings":
            timings_ms = [FORGED_RUN_MS] * len(timings_ms)
        honest = dataclasses.replace(self, strategy="")
        return ServedModel.benchmark_result_message(honest, task, result, timings_ms, session_key)


def colluding(result: Any) -> np.ndarray:
    """Truncated to COLLUDE_KEEP_DIMS and renormalised: deterministic, so every colluder
    sends byte-identical vectors, still 384 wide and unit-norm."""
    vectors = np.array(result, dtype=np.float32)
    vectors[:, COLLUDE_KEEP_DIMS:] = 0
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


class HostileClient(NodeClient):
    """The real `NodeClient` with the socket-level strategies (silence, flood, oversized,
    reconnect storm); the result-level ones live in `HostileModel`."""

    strategy = ""

    async def _accept_job(self, conn: _Connection, message: dict[str, Any]) -> None:
        if self.strategy == "silence":
            log.info("keeping assignment %s without answering", message.get("assignment_id"))
            return
        if self.strategy == "reconnect_storm":
            await conn.ws.close(1001, "storm")  # the client reconnects at once (backoff_initial_s)
            return
        if self.strategy == "oversized":
            padding = "x" * OVERSIZED_BYTES
            await send(conn.ws, {"type": "result", "assignment_id": message.get("assignment_id"), "data": padding})
            return
        await super()._accept_job(conn, message)

    async def _heartbeat(self, conn: _Connection) -> None:
        if self.strategy != "flood":
            return await super()._heartbeat(conn)
        # One honest interval first, so the node is benchmarked and routable, then the flood.
        await asyncio.sleep(conn.heartbeat_s)
        frame = json.dumps({"type": "heartbeat"})
        while True:
            await conn.ws.send(frame)
            await asyncio.sleep(0)  # let the receiver see rate_limited and the close


def build_parser() -> argparse.ArgumentParser:
    parser = sim_node.build_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--strategy", choices=STRATEGIES, required=True)
    return parser


def prepare_node(args: argparse.Namespace) -> NodeClient:
    client = sim_node.prepare_node(args, client_class=HostileClient)
    client.strategy = args.strategy
    model = client.model
    fields = {field.name: getattr(model, field.name) for field in dataclasses.fields(model)}
    client.model = HostileModel(**fields, strategy=args.strategy)
    if args.strategy == "reconnect_storm":
        client.backoff_initial_s = 0.05
    return client


def main(argv: list[str] | None = None) -> int:
    return sim_node.main(argv, parser=build_parser(), make_client=prepare_node)


if __name__ == "__main__":
    sys.exit(main())
