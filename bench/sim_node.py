"""A simulated contributor node for benchmarks: the real node minus the model.

It registers through the registry's HTTP API, accepts the subnet's license, connects with
the real `NodeClient` (challenge, signed hello, `ready` with the subnet's model_checksum,
signed results) and answers every job at once with vectors precomputed by the real model
(see `bench/throughput.py`), so a benchmark measures the registry, not the model. It
skips the artifact download because it runs no model, unless `--fetch-model DIR` asks for
it (bench/bandwidth.py counts those bytes); everything on the wire is what a real node
sends, so verification passes (or fails) honestly.

`--upscale` serves an image subnet instead, with a nearest-neighbour 2x upscale: cheap,
deterministic, and a result whose size is the image family's (the bench subnet that uses it
has a benchmark reference computed with the same function). Peer-to-peer jobs work as on a
real node; on one machine, `BIM_P2P_LOOPBACK=1` lets its peers use 127.0.0.1, as it does
for `bim_node`.

    python bench/sim_node.py --registry URL --token TOKEN --subnet minilm-embed \
        --name sim-a --key-file var/bench/run/nodes/sim-a.key --vectors vectors.npz \
        --source-ip 127.0.1.1
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# bench/ is on sys.path when this runs as a script, and bench/websockets.py would then be
# imported for the websockets library (the node client uses it): off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bim_core import protocol  # noqa: E402
from bim_core.png import png_decode  # noqa: E402
from bim_node.artifacts import ArtifactError, fetch_model  # noqa: E402
from bim_node.keys import KeyFileError, load_or_create_key  # noqa: E402
from bim_node.registry_api import RegistryApi, RegistryError, websocket_url  # noqa: E402
from bim_node.session import NodeClient, NodeFatalError  # noqa: E402

log = logging.getLogger("bench.sim_node")


class PrecomputedVectors:
    """`compute(inputs)` by lookup: a text that was not precomputed is a compute error
    (the node answers `job_failed`), never a made-up vector."""

    def __init__(self, path: Path, delay_s: float = 0.0) -> None:
        # A fixed compute time per call: gives nodes a real (and equal) speed to compare.
        self.delay_s = delay_s
        with np.load(path) as data:
            texts = data["texts"].tolist()
            self.vectors = np.ascontiguousarray(data["vectors"], dtype=np.float32)
        self.rows = {text: row for row, text in enumerate(texts)}

    def __call__(self, inputs: dict[str, list[str]]) -> np.ndarray:
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.vectors[[self.rows[text] for text in inputs["texts"]]]


def upscale_2x(inputs: dict[str, str]) -> np.ndarray:
    """Nearest-neighbour 2x of the job's PNG: the image family's result shape and size at
    no model's cost."""
    pixels = png_decode(protocol.b64decode(inputs["image"]))
    return pixels.repeat(2, axis=0).repeat(2, axis=1)


def build_parser(description: str = __doc__.split("\n\n")[0]) -> argparse.ArgumentParser:
    """The simulated node's options, for this script and for those that extend it."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--subnet", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--key-file", type=Path, required=True)
    parser.add_argument("--vectors", type=Path, help=".npz with `texts` and `vectors` (embedding subnets)")
    parser.add_argument("--upscale", action="store_true", help="serve an image subnet with a nearest-neighbour 2x upscale")
    parser.add_argument(
        "--fetch-model",
        type=Path,
        metavar="DIR",
        help="download and verify the subnet's model into DIR, as a real node does, without running it",
    )
    parser.add_argument("--max-concurrent", type=int, default=1, help="as the real node (default 1)")
    parser.add_argument(
        "--source-ip",
        help="connect the websocket from this local address (e.g. 127.0.3.1): nodes on one "
        "machine then sit in different /24 blocks, as the routing policy wants",
    )
    parser.add_argument("--compute-delay-s", type=float, default=0.0, help="seconds each compute call takes (0)")
    parser.add_argument("--log-level", default="WARNING")
    return parser


def prepare_node(args: argparse.Namespace, client_class: type[NodeClient] = NodeClient) -> NodeClient:
    """What `bim_node.__main__.prepare_node` does, less the model download; `client_class`
    lets a benchmark run a variant of the client (bench/hostile_node.py)."""
    if args.upscale:
        compute: Callable[[Any], np.ndarray] = upscale_2x
    elif args.vectors is not None:
        compute = PrecomputedVectors(args.vectors, args.compute_delay_s)
    else:
        raise NodeFatalError("give --vectors (an embedding subnet) or --upscale (an image subnet)")
    key = load_or_create_key(args.key_file)
    api = RegistryApi(args.registry, args.token)
    subnet = next((s for s in api.subnets() if s.get("slug") == args.subnet), None)
    if subnet is None:
        raise NodeFatalError(f"the registry has no subnet {args.subnet!r}")
    license_: dict[str, Any] = subnet.get("license") or {}
    api.accept_license(args.subnet, str(license_.get("version")))
    if args.fetch_model is not None:
        fetch_model(api, subnet["manifest_url"], args.fetch_model, expected_checksum=subnet["model_checksum"])
    env = {
        "os": sys.platform,
        "runtime": "bench-sim",
        "backend": "cpu",
        "gpu_family": "none",
        "cpu_count": os.cpu_count() or 1,
    }
    node = api.register_node(public_key=protocol.public_key_b64(key), name=args.name, subnets=[args.subnet], env=env)
    log.info("registered as node %s", node["id"])
    return client_class(
        ws_url=websocket_url(args.registry, args.token),
        node_id=str(node["id"]),
        key=key,
        subnet=args.subnet,
        # The subnet's checksum, as a real node sends after verifying the download: the
        # precomputed vectors came from the model with this checksum (bench/throughput.py).
        model_checksum=str(subnet["model_checksum"]),
        env=env,
        compute=compute,
        task_type=str(subnet.get("task_type", "embedding")),
        max_concurrent=args.max_concurrent,
        source_ip=args.source_ip,
    )


async def serve(client: NodeClient) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await client.run(stop)
    log.info("stopped after %d jobs (%d failed)", client.jobs_done, client.jobs_failed)


def main(
    argv: list[str] | None = None,
    *,
    parser: argparse.ArgumentParser | None = None,
    make_client: Callable[[argparse.Namespace], NodeClient] = prepare_node,
) -> int:
    """Serve until SIGTERM; bench/hostile_node.py passes its own options and client."""
    args = (parser or build_parser()).parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.environ.get("BIM_P2P_LOOPBACK", "").strip().lower() in ("1", "true", "yes"):
        # As bim_node's main does: peers on this machine's 127.0.0.1 only (bim_core.peer).
        from bim_core.peer import allow_loopback

        allow_loopback()
    try:
        asyncio.run(serve(make_client(args)))
    except (RegistryError, KeyFileError, NodeFatalError, ArtifactError) as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
