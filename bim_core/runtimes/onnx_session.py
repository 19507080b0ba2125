"""The onnxruntime session every ONNX runner of a node uses, with its settings pinned.

Two nodes of one subnet must compute alike, so nothing is left to the runtime's defaults:
one inter-op thread, sequential execution, the CPU provider and the graph optimization
level (other levels move the last bits of the output; bench/agreement.py measures by how
much). Only the intra-op thread count is the node's choice: it changes no result.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

RUNTIME = f"onnxruntime-{ort.__version__}"


def pinned_session(
    model: bytes | Path,
    *,
    threads: int = 1,
    optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = optimization
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
