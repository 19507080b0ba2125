"""A subnet's tokenizer at submit: the tokens a text counts (OpenAI-style usage) and the
texts of an embedding job it mostly maps to its unknown token (a warning to the user)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from bim_core.families import family_for

from .models import Artifact, Subnet
from .services import packaged_file


@functools.lru_cache(maxsize=256)
def _tokenizer_artifact(subnet_id: int, tokenizer_checksum: str) -> tuple[str, str] | None:
    """(source, sha256) of the subnet's tokenizer, read once per process and pinned
    checksum: submit asks for every job, and a subnet's artifacts are written with it (by
    its package) and pinned by checksum."""
    row = Artifact.objects.filter(subnet_id=subnet_id, role=Artifact.Role.TOKENIZER).values_list("source", "sha256")
    found = row.first()
    return (found[0], found[1]) if found else None


@functools.lru_cache(maxsize=8)
def _tokenizer(source: str, checksum: str) -> Any:
    """The tokenizer artifact `source` ("package:path"), loaded once per process and pinned
    checksum: locating the package walks sys.path, and submit asks for every job."""
    from tokenizers import Tokenizer

    package, _, path = source.partition(":")
    tokenizer = Tokenizer.from_file(str(packaged_file(package, path)))
    # The shipped tokenizer.json pads to 128: count only the text's own tokens.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


@functools.lru_cache(maxsize=8)
def _ascii_word_limit(source: str, checksum: str) -> int:
    return ascii_word_limit_of(_tokenizer(source, checksum))


def ascii_word_limit_of(tokenizer: Any) -> int:
    """How long a run of ASCII characters between spaces may be and still be mapped with no
    unknown token: a BERT-style WordPiece tokenizer's longest word, when its vocabulary
    holds every ASCII character as it normalizes, alone and, where the pre-tokenizer keeps
    it inside a word, as a continuation (greedy WordPiece then always finds a piece); 0 for
    any other tokenizer (every text is encoded). BERT's normalizer maps an ASCII character
    to at most one and its pre-tokenizer splits at least at every space, so such a run holds
    every word it makes."""
    from tokenizers import models, normalizers, pre_tokenizers

    model, normalizer, pre_tokenizer = tokenizer.model, tokenizer.normalizer, tokenizer.pre_tokenizer
    if not (
        isinstance(model, models.WordPiece)
        and isinstance(normalizer, normalizers.BertNormalizer)
        and isinstance(pre_tokenizer, pre_tokenizers.BertPreTokenizer)
    ):
        return 0
    vocab = tokenizer.get_vocab()
    for code in range(128):
        normalized = normalizer.normalize_str(chr(code))
        if len(normalized) > 1:
            return 0
        for char in normalized.strip():
            inside_a_word = len(pre_tokenizer.pre_tokenize_str(f"a{char}a")) == 1
            if char not in vocab or (inside_a_word and model.continuing_subword_prefix + char not in vocab):
                return 0
    return int(model.max_input_chars_per_word)


def input_token_count(subnet: Subnet, texts: Sequence[str]) -> int | None:
    """Tokens of `texts` by the subnet's own tokenizer (what OpenAI-style `usage` reports),
    None for a subnet without one."""
    artifact = subnet.artifacts.filter(role=Artifact.Role.TOKENIZER).first()
    if not family_for(subnet.task_type).tokenized_texts or artifact is None:
        return None
    tokenizer = _tokenizer(artifact.source, artifact.sha256)
    return sum(len(e.ids) for e in tokenizer.encode_batch(list(texts), add_special_tokens=False))


def input_coverage_warnings(subnet: Subnet, inputs: dict[str, Any], *, threshold: float = 0.5) -> list[str]:
    """Texts of an embedding job that the subnet's tokenizer mostly maps to its unknown
    token. Their embeddings barely depend on their content, so no cosine check can tell one
    such text's vector from another's: the user is warned at submit (honeypots and
    sentinels remain the guard)."""
    texts = inputs.get("texts")
    if not family_for(subnet.task_type).tokenized_texts or not texts:
        return []
    artifact = _tokenizer_artifact(subnet.pk, subnet.tokenizer_checksum)
    if artifact is None:
        return []
    tokenizer = _tokenizer(*artifact)
    unknown = tokenizer.token_to_id("[UNK]")
    ascii_word_limit = _ascii_word_limit(*artifact)
    warnings = []
    for index, text in enumerate(texts):
        if text.isascii() and max(map(len, text.split(" "))) <= ascii_word_limit:
            continue  # no unknown token in it (ascii_word_limit_of); most texts, 4 µs not 30
        encoding = tokenizer.encode(text, add_special_tokens=False)
        if unknown is None or not encoding.ids:
            continue
        share = encoding.ids.count(unknown) / len(encoding.ids)
        if share >= threshold:
            warnings.append(
                f"texts[{index}]: {share:.0%} of its tokens are unknown to the model's tokenizer; its embedding "
                "barely depends on its content and verification cannot tell it from another such text"
            )
    return warnings
