"""Real texts for the browser tests and bench/browser_agreement.py, built deterministically
from what the repository ships: tests/data/multilingual_sentences.jsonl (accents, emoji, CJK,
RTL scripts, odd whitespace, code), scripts/demo_texts.txt and subnets/honeypot_texts.txt,
plus variants: casing, pairs joined, emoji added, and long concatenations that the
tokenizer truncates at max_tokens."""

from __future__ import annotations

import json

from bim_site.processes import ROOT

EMOJI = ["🙂", "🚀", "🇯🇵", "👩🏽‍💻", "☕", "🍣"]


def base_texts() -> list[str]:
    lines = (ROOT / "tests" / "data" / "multilingual_sentences.jsonl").read_text("utf-8").splitlines()
    texts = [json.loads(line) for line in lines if line.strip()]
    for path in (ROOT / "scripts" / "demo_texts.txt", ROOT / "subnets" / "honeypot_texts.txt"):
        texts += [line.strip() for line in path.read_text("utf-8").splitlines() if line.strip()]
    return list(dict.fromkeys(texts))


def corpus(count: int) -> list[str]:
    """`count` distinct texts: every base text, then variants of them in a fixed order."""
    base = base_texts()
    out = list(base)
    seen = set(out)
    k = 0
    while len(out) < count:
        a, b = base[(k * 7) % len(base)], base[(k * 13 + 5) % len(base)]
        kind = k % 5
        if kind == 0:
            text = f"{a} {b}"
        elif kind == 1:
            text = a.upper() + f" {EMOJI[k % len(EMOJI)]}"
        elif kind == 2:
            # Long enough to be truncated at 256 tokens (keep [CLS] ... [SEP]).
            text = " ".join(base[(k + j * 3) % len(base)] for j in range(30))
        elif kind == 3:
            text = f"{EMOJI[k % len(EMOJI)]} {b.lower()}"
        else:
            text = f"{a} — {b} ({k})"
        k += 1
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out[:count]
