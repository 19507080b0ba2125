"""An embedding job's coverage warnings (texts its tokenizer mostly maps to [UNK]) are the
tokenizer's own, whether a text is encoded or passed by the ASCII rule
(subnets.tokenizing.ascii_word_limit_of), which spares encoding the texts that cannot hold
an unknown token."""

from __future__ import annotations

import os
import random
import string

import pytest
from django.core.management import call_command
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from subnets import tokenizing
from subnets.models import Subnet

pytestmark = pytest.mark.django_db


@pytest.fixture
def real_subnet():
    with open(os.devnull, "w") as quiet:
        call_command("bim_seed", stdout=quiet)
    return Subnet.objects.get(slug="minilm-embed")


class CountingTokenizer:
    def __init__(self, tokenizer):
        self.tokenizer, self.encoded = tokenizer, []

    def encode(self, text, **kwargs):
        self.encoded.append(text)
        return self.tokenizer.encode(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def hostile_texts() -> list[str]:
    rng = random.Random(13)
    texts = [
        "", " ", "The quick brown fox.", "UPPER lower MiXeD 123 !?#$%&'()*+,-./:;<=>@[\\]^_`{|}~",
        "a" * 100, "a" * 101, "word " + "b" * 101, "tab\tseparated\nlines\r",
        "a" * 60 + "\x1f" + "a" * 60,  # a control character is removed, joining one word of 120
        "a" * 60 + "\t" + "a" * 60, "\x00\x01\x7f", "ᚠᚢᚦᚨᚱᚲ ᚷᚹᚺᚾᛁᛃ", "naïve café", "mostly ascii ᚠᚢᚦ ᚨᚱᚲ ᚷᚹᚺ",
    ]
    alphabet = string.printable + "\x00\x1c\x1f\x7f"
    for _ in range(300):
        words = ["".join(rng.choice(alphabet) for _ in range(rng.choice([1, 5, 40, 99, 100, 101, 130]))) for _ in range(3)]
        texts.append(" ".join(words))
    return texts


def test_warnings_are_the_tokenizers_own_for_every_text(real_subnet, monkeypatch):
    texts = hostile_texts()
    fast = [tokenizing.input_coverage_warnings(real_subnet, {"texts": [text]}) for text in texts]
    monkeypatch.setattr(tokenizing, "_ascii_word_limit", lambda *_: 0)  # every text encoded
    encoded = [tokenizing.input_coverage_warnings(real_subnet, {"texts": [text]}) for text in texts]
    assert fast == encoded
    warned = {text for text, warnings in zip(texts, encoded) if warnings}
    assert {"a" * 101, "word " + "b" * 101, "a" * 60 + "\x1f" + "a" * 60, "ᚠᚢᚦᚨᚱᚲ ᚷᚹᚺᚾᛁᛃ"} <= warned


def test_plain_ascii_text_is_not_encoded(real_subnet, monkeypatch):
    artifact = tokenizing._tokenizer_artifact(real_subnet.pk, real_subnet.tokenizer_checksum)
    counting = CountingTokenizer(tokenizing._tokenizer(*artifact))
    monkeypatch.setattr(tokenizing, "_tokenizer", lambda *_: counting)
    texts = ["The bridge inspection found no structural damage.", "b" * 101, "ᚠᚢᚦᚨᚱᚲ"]
    warnings = tokenizing.input_coverage_warnings(real_subnet, {"texts": texts})
    assert counting.encoded == texts[1:]  # before: all three
    assert [w.split(":")[0] for w in warnings] == ["texts[1]", "texts[2]"]


def test_a_tokenizer_of_another_shape_encodes_every_text():
    bert = Tokenizer(models.WordPiece({"[UNK]": 0, "a": 1, "##a": 2}, unk_token="[UNK]"))
    bert.normalizer = normalizers.BertNormalizer()
    bert.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    assert tokenizing.ascii_word_limit_of(bert) == 0  # its vocabulary lacks most of ASCII
    vocab = {"[UNK]": 0, **{c: i + 1 for i, c in enumerate(string.printable.strip())}}
    vocab.update({f"##{c}": len(vocab) + i for i, c in enumerate(string.ascii_lowercase + string.digits)})
    whitespace = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=50))
    whitespace.normalizer = normalizers.BertNormalizer()
    whitespace.pre_tokenizer = pre_tokenizers.Whitespace()
    assert tokenizing.ascii_word_limit_of(whitespace) == 0  # not BERT's pre-tokenizer
    whitespace.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    assert tokenizing.ascii_word_limit_of(whitespace) == 50
