"""Sentence embeddings with an ONNX transformer: tokenize, run, mean-pool, L2-normalize.

Every choice here is part of what two nodes must agree on for their vectors to
verify against each other (cosine >= the subnet's tau): the tokenizer file,
truncation to `max_tokens` keeping [CLS] ... [SEP], mean pooling over the
attention mask, L2 normalization, float32 output. Batching by length is an
implementation detail: with onnxruntime 1.32 it is bit-identical to batch 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from .onnx_session import pinned_session


class Embedder:
    """A callable `texts -> float32 (n, dim)` array of unit vectors."""

    def __init__(
        self,
        model: bytes | Path,
        tokenizer: bytes | Path,
        *,
        max_tokens: int = 256,
        threads: int = 1,
        batch_size: int = 32,
        pooling: str = "mean",
        normalize: bool = True,
        optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    ) -> None:
        if pooling != "mean":
            raise ValueError(f"pooling {pooling!r} is not supported (only 'mean')")
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.normalize = normalize

        tokenizer_json = (
            tokenizer.read_text("utf-8")
            if isinstance(tokenizer, Path)
            else (tokenizer.decode("utf-8"))
        )
        self.tokenizer = Tokenizer.from_str(tokenizer_json)
        # tokenizer.json ships its own settings (truncate and pad to 128): replace
        # them with the subnet's max_tokens and pad per batch below instead.
        self.tokenizer.enable_truncation(max_length=max_tokens)
        self.tokenizer.no_padding()
        pad_id = self.tokenizer.token_to_id("[PAD]")
        self.pad_id = 0 if pad_id is None else pad_id

        self.session = pinned_session(model, threads=threads, optimization=optimization)
        self.input_names = {i.name for i in self.session.get_inputs()}
        output = self.session.get_outputs()[0]  # last_hidden_state: batch x seq x dim
        self.output_name = output.name
        self.dim = int(output.shape[-1])

    @classmethod
    def from_preprocessing(
        cls,
        model: bytes | Path,
        tokenizer: bytes | Path,
        preprocessing: dict[str, Any],
        *,
        threads: int = 1,
    ) -> Embedder:
        """Build from a manifest's `preprocessing` block."""
        return cls(
            model,
            tokenizer,
            max_tokens=int(preprocessing.get("max_tokens", 256)),
            pooling=str(preprocessing.get("pooling", "mean")),
            normalize=bool(preprocessing.get("normalize", True)),
            threads=threads,
        )

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(list(texts))
        # Sorting by length keeps padding (3x the work when unsorted) out of batches.
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            out[batch] = self._embed_batch([encodings[i].ids for i in batch])
        return out

    def _embed_batch(self, ids: list[list[int]]) -> np.ndarray:
        width = max(len(row) for row in ids)
        input_ids = np.full((len(ids), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, tokens in enumerate(ids):
            input_ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        feeds = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "token_type_ids": np.zeros_like(input_ids),
        }
        hidden: np.ndarray
        (hidden,) = self.session.run(
            [self.output_name],
            {name: value for name, value in feeds.items() if name in self.input_names},
        )
        weights = mask[:, :, None].astype(np.float32)
        pooled: np.ndarray = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        if self.normalize:
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            pooled = pooled / np.maximum(norms, 1e-12)
        return pooled.astype(np.float32)
