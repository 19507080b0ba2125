"""The headless contributor node (`bim-node`, or `python -m bim_node`): register with the
registry, fetch and verify the subnet's model, then serve jobs until stopped."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from bim_core import protocol

from .artifacts import ArtifactError, fetch_model
from .keys import KeyFileError, load_or_create_key
from .registry_api import RegistryApi, RegistryError, websocket_url
from .session import NodeClient, NodeFatalError

log = logging.getLogger("bim_node")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bim-node", description=__doc__)
    parser.add_argument("--registry", required=True, help="e.g. http://127.0.0.1:8000")
    parser.add_argument(
        "--token", default=os.environ.get("BIM_TOKEN"), help="API token (default: $BIM_TOKEN)"
    )
    parser.add_argument("--subnet", required=True, help="subnet slug, e.g. minilm-embed")
    parser.add_argument("--name", required=True, help="a name for this node")
    parser.add_argument(
        "--key-file",
        type=Path,
        required=True,
        help="long-term Ed25519 key (created with mode 0600 if absent)",
    )
    parser.add_argument("--cache-dir", type=Path, required=True, help="model chunk cache")
    parser.add_argument(
        "--accept-license",
        action="store_true",
        help="accept the subnet's model license on this user's behalf",
    )
    parser.add_argument("--threads", type=int, default=1, help="compute threads (onnxruntime intra-op, llama.cpp)")
    parser.add_argument("--os", default=_default_os(), help="reported OS family")
    parser.add_argument("--gpu-family", default="none", help="reported GPU family")
    parser.add_argument(
        "--source-ip", help="local address to connect from (e.g. 127.2.0.1 for a loopback demo)"
    )
    parser.add_argument(
        "--no-webrtc",
        action="store_true",
        default=_env_flag("BIM_NODE_NO_WEBRTC"),
        help="ignore users' WebRTC offers: peer-to-peer jobs then reach this node through the "
        "registry relay (default: $BIM_NODE_NO_WEBRTC)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token (or $BIM_TOKEN) is required")
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    return args


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def _default_os() -> str:
    return {"darwin": "macos", "win32": "windows"}.get(sys.platform, sys.platform)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if _env_flag("BIM_P2P_LOOPBACK"):
        # Tests and one-machine demos: users and nodes on 127.0.0.1 only (bim_core.peer).
        from bim_core.peer import allow_loopback

        allow_loopback()
    try:
        return asyncio.run(_serve(prepare_node(args)))
    except (RegistryError, ArtifactError, KeyFileError, NodeFatalError) as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the websocket (e.g. mid-download)
        return 130


def prepare_node(args: argparse.Namespace) -> NodeClient:
    """Everything before the websocket: key, registration, verified model."""
    # Imported here so that `--help` does not pay for loading onnxruntime.
    from bim_core.runtimes.runners import runner_load, runtime_for

    key = load_or_create_key(args.key_file)
    api = RegistryApi(args.registry, args.token)

    subnet = _find_subnet(api.subnets(), args.subnet)
    task_type = str(subnet.get("task_type", "embedding"))
    try:
        runtime = runtime_for(task_type)
    except ValueError as exc:
        raise NodeFatalError(f"subnet {args.subnet!r}: {exc}") from None
    if args.accept_license:
        license_ = subnet.get("license") or {}
        log.info(
            "accepting license %s version %s for subnet %s",
            license_.get("name"),
            license_.get("version"),
            args.subnet,
        )
        api.accept_license(args.subnet, str(license_.get("version")))

    env = {
        "os": args.os,
        "runtime": runtime,
        "backend": "cpu",
        "gpu_family": args.gpu_family,
        "cpu_count": os.cpu_count() or 1,
        # Without WebRTC, the registry sends peer-to-peer jobs elsewhere while it can.
        "webrtc": not args.no_webrtc,
    }
    node = api.register_node(
        public_key=protocol.public_key_b64(key), name=args.name, subnets=[args.subnet], env=env
    )
    node_id = str(node["id"])
    log.info("registered as node %s", node_id)

    bundle = fetch_model(
        api, subnet["manifest_url"], args.cache_dir, expected_checksum=subnet["model_checksum"]
    )
    try:
        compute = runner_load(task_type, bundle.files, bundle.preprocessing, threads=args.threads)
    except ValueError as exc:
        raise ArtifactError(str(exc)) from None
    log.info("loaded model %s (%s)", bundle.model_id, bundle.model_checksum)
    return NodeClient(
        ws_url=websocket_url(args.registry, args.token),
        node_id=node_id,
        key=key,
        subnet=args.subnet,
        model_checksum=bundle.model_checksum,
        tokenizer_checksum=bundle.checksums.get("tokenizer"),
        env=env,
        compute=compute,
        task_type=task_type,
        source_ip=args.source_ip,
        webrtc=not args.no_webrtc,
    )


def _find_subnet(subnets: list[dict[str, Any]], slug: str) -> dict[str, Any]:
    for subnet in subnets:
        if subnet.get("slug") == slug:
            return subnet
    known = ", ".join(sorted(str(s.get("slug")) for s in subnets)) or "none"
    raise NodeFatalError(f"the registry has no subnet {slug!r} (it has: {known})")


async def _serve(client: NodeClient) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await client.run(stop)
    log.info("stopped after %d jobs", client.jobs_done)
    return 0


if __name__ == "__main__":
    sys.exit(main())
