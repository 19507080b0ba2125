"""The embedder on the real all-MiniLM-L6-v2 int8 model."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from bim_core.runtimes.embedder import Embedder

TEXTS = [
    "A man is playing a guitar on stage.",
    "Someone performs music with a guitar.",
    "The central bank raised interest rates again.",
    "short",
    "",
    "Ein Satz auf Deutsch, mit Umlauten: Grüße aus Köln.",
    "word " * 40,
]


def test_it_returns_unit_float32_vectors(embedder: Embedder) -> None:
    vectors = embedder(TEXTS)
    assert vectors.shape == (len(TEXTS), 384)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)


def test_it_returns_no_rows_for_no_texts(embedder: Embedder) -> None:
    assert embedder([]).shape == (0, 384)


def test_similar_sentences_are_closer_than_unrelated_ones(embedder: Embedder) -> None:
    guitar, music, rates = embedder(TEXTS[:3])
    assert guitar @ music > 0.5
    assert guitar @ music > guitar @ rates + 0.3


def test_it_is_bit_identical_across_sessions(
    embedder: Embedder, model_path: Path, tokenizer_bytes: bytes
) -> None:
    # A second session, built from bytes rather than a path, as the node does.
    other = Embedder(model_path.read_bytes(), tokenizer_bytes)
    assert np.array_equal(embedder(TEXTS), other(TEXTS))


def test_it_is_bit_identical_across_batch_order_and_size(embedder: Embedder) -> None:
    expected = embedder(TEXTS)
    order = list(range(len(TEXTS)))
    random.Random(7).shuffle(order)
    shuffled = embedder([TEXTS[i] for i in order])
    assert np.array_equal(shuffled, expected[order])
    one_by_one = np.stack([embedder([text])[0] for text in TEXTS])
    assert np.array_equal(one_by_one, expected)


def test_it_truncates_long_inputs_keeping_cls_and_sep(embedder: Embedder) -> None:
    long_text = "the quick brown fox jumps over the lazy dog " * 200
    encoding = embedder.tokenizer.encode(long_text)
    assert len(encoding.ids) == 256
    assert encoding.tokens[0] == "[CLS]"
    assert encoding.tokens[-1] == "[SEP]"

    vectors = embedder([long_text, long_text + " and then some more words"])
    assert vectors.shape == (2, 384)
    # Only the first 254 word pieces count, so the tail makes no difference.
    assert np.array_equal(vectors[0], vectors[1])


def test_it_overrides_the_tokenizer_files_own_128_token_limit(embedder: Embedder) -> None:
    # tokenizer.json ships truncation and padding at 128: the subnet says 256.
    assert len(embedder.tokenizer.encode("word " * 500).ids) == 256
    assert len(embedder.tokenizer.encode("two words").ids) == 4


def test_it_refuses_a_pooling_it_does_not_implement(
    model_path: Path, tokenizer_bytes: bytes
) -> None:
    with pytest.raises(ValueError, match="pooling"):
        Embedder(model_path, tokenizer_bytes, pooling="cls")
