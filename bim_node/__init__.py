"""The headless contributor node: `python -m bim_node --help`.

It registers with the registry, downloads and verifies its subnet's model,
then serves jobs over the node websocket (docs/protocol.md). It never imports
Django: it shares only `bim_core.protocol`, a pure module, with the registry.
"""
