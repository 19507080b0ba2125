"""The headless contributor node: `bim-node --help` (or `python -m bim_node --help`).

It registers with the registry (`registry_api`), downloads and verifies its subnet's model
(`artifacts`), then serves jobs over the node websocket (`session`, `handshake`, `jobs`;
docs/protocol.md). It never imports Django: it shares only `bim_core`, the pure core, with
the registry.
"""
