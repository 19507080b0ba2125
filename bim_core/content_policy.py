"""A subnet's content policy (the paper's section 9, "content policy enforcement embedded in
job contracts"): a versioned document copied into every job contract, checked by the
registry at submit, by nodes before they compute and by the registry on text outputs
before delivery (docs/content-policy.md).

Pure module (no Django), shared by the registry, the node and the SDK. A policy:

    {"id": "smollm2-text", "version": 3,
     "input": {"max_chars": 1600, "max_items": 1,
               "blocked": [{"name": "example.weapons", "patterns": ["\\bnerve agent\\b"]}]},
     "output": {"max_chars": 4000, "max_tokens": 256, "blocked": [...]},
     "rate_limit": {"jobs_per_minute": 120}}

Every part but id and version is optional; an empty policy ({}) is no policy at all.

Patterns are regular expressions matched case-insensitively, restricted so that no input
can make one slow. The `regex` module (with its timeout) is not installed here, and `re`
cannot be interrupted, so the syntax is limited instead and checked on `re`'s own parse
tree: no backreferences, lookarounds, inline flags or named groups (`(?` other than
`(?:`), a quantifier only on a single character or class, at most one quantifier that
repeats a varying number of times (`{n}` is free) and at most two `?`. Catastrophic backtracking needs a quantified
group or two overlapping repeats; without them a search is at worst quadratic in the
text, and texts are bounded by the subnet's limits. The same subset means the same in
JavaScript's RegExp (the browser node's check, contributor/static/js/policy.js).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from re import _constants as sre_constants  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

MAX_RULES = 32
MAX_PATTERNS_PER_RULE = 64
MAX_PATTERNS = 256
MAX_PATTERN_CHARS = 200
MAX_OPTIONALS = 2
MAX_BOUNDED_REPEAT = 100
RULE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
POLICY_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
MAX_LIMIT = 10**9

_TOP_KEYS = {"id", "version", "input", "output", "rate_limit"}
_INPUT_KEYS = {"max_chars", "max_items", "blocked"}
_OUTPUT_KEYS = {"max_chars", "max_tokens", "blocked"}
_RATE_KEYS = {"jobs_per_minute"}
# Matchers of one character: the only thing a quantifier may repeat.
_ONE_CHAR = {sre_constants.LITERAL, sre_constants.NOT_LITERAL, sre_constants.ANY, sre_constants.IN}
_ANCHORS = {
    sre_constants.AT_BEGINNING,
    sre_constants.AT_END,
    sre_constants.AT_BOUNDARY,
    sre_constants.AT_NON_BOUNDARY,
}
_REPEATS = {sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT}


class PolicyInvalid(ValueError):
    pass


@dataclass(frozen=True)
class Violation:
    """Which rule a job breaks: a blocked-pattern rule's name, or the limit's path
    ("input.max_chars", "output.max_tokens", ...)."""

    rule: str
    detail: str

    @property
    def reason(self) -> str:
        return f"content_policy:{self.rule}"


def _positive_int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_LIMIT:
        raise PolicyInvalid(f"{where} must be an integer from 1 to {MAX_LIMIT}")
    return value


def _check_keys(section: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if not isinstance(section, dict):
        raise PolicyInvalid(f"{where} must be an object")
    unknown = set(section) - allowed
    if unknown:
        raise PolicyInvalid(f"{where} has unknown fields {sorted(map(str, unknown))}")
    return section


def _walk(items: Any, counts: dict[str, int]) -> None:
    for op, arg in items:
        if op in _ONE_CHAR:
            if op == sre_constants.IN:
                for class_op, _ in arg:
                    if class_op not in (
                        sre_constants.LITERAL, sre_constants.RANGE, sre_constants.CATEGORY, sre_constants.NEGATE
                    ):
                        raise PolicyInvalid("a character class may hold characters, ranges and \\d \\w \\s only")
            continue
        if op == sre_constants.AT:
            if arg not in _ANCHORS:
                raise PolicyInvalid("anchors are ^ $ \\b \\B only")
        elif op == sre_constants.BRANCH:
            for alternative in arg[1]:
                _walk(alternative, counts)
        elif op == sre_constants.SUBPATTERN:
            _group, add_flags, del_flags, body = arg
            if add_flags or del_flags:
                raise PolicyInvalid("inline flags are not allowed")
            _walk(body, counts)
        elif op in _REPEATS:
            low, high, body = arg
            if len(body) != 1 or body[0][0] not in _ONE_CHAR:
                raise PolicyInvalid("a quantifier may repeat one character or class only, not a group")
            _walk(body, counts)
            if low == high:
                continue  # {n}: no choice to backtrack over
            if high == 1:
                counts["optional"] += 1
            else:
                if high != sre_constants.MAXREPEAT and high > MAX_BOUNDED_REPEAT:
                    raise PolicyInvalid(f"a bounded quantifier repeats at most {MAX_BOUNDED_REPEAT} times")
                counts["repeat"] += 1
        else:
            raise PolicyInvalid(f"{str(op).lower()} is not allowed in a pattern")


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The pattern compiled case-insensitively, or PolicyInvalid saying what it may not hold."""
    if not isinstance(pattern, str) or not 1 <= len(pattern) <= MAX_PATTERN_CHARS:
        raise PolicyInvalid(f"a pattern is a string of 1 to {MAX_PATTERN_CHARS} characters")
    if re.search(r"\(\?(?!:)", pattern):
        raise PolicyInvalid("lookarounds, named groups and inline flags ((? other than (?:) are not allowed")
    try:
        parsed = sre_parse.parse(pattern, re.IGNORECASE)
        compiled = re.compile(pattern, re.IGNORECASE)
    except (re.error, RecursionError, OverflowError) as exc:
        raise PolicyInvalid(f"pattern {pattern!r} is not a regular expression: {exc}") from None
    counts = {"optional": 0, "repeat": 0}
    try:
        _walk(parsed, counts)
    except PolicyInvalid as exc:
        raise PolicyInvalid(f"pattern {pattern!r}: {exc}") from None
    if counts["repeat"] > 1 or counts["optional"] > MAX_OPTIONALS:
        raise PolicyInvalid(
            f"pattern {pattern!r}: at most one repeating quantifier (* + {{m,n}}) and {MAX_OPTIONALS} ?"
        )
    return compiled


def _check_rules(rules: Any, where: str, total: list[int]) -> None:
    if not isinstance(rules, list) or len(rules) > MAX_RULES:
        raise PolicyInvalid(f"{where} must be a list of at most {MAX_RULES} rules")
    names = set()
    for index, rule in enumerate(rules):
        rule = _check_keys(rule, {"name", "patterns"}, f"{where}[{index}]")
        name, patterns = rule.get("name"), rule.get("patterns")
        if not isinstance(name, str) or not RULE_NAME.match(name):
            raise PolicyInvalid(f"{where}[{index}].name must be a lowercase slug of at most 64 characters")
        if name in names:
            raise PolicyInvalid(f"{where}: rule {name!r} appears twice")
        names.add(name)
        if not isinstance(patterns, list) or not 1 <= len(patterns) <= MAX_PATTERNS_PER_RULE:
            raise PolicyInvalid(f"{where}[{index}].patterns must list 1 to {MAX_PATTERNS_PER_RULE} patterns")
        total[0] += len(patterns)
        if total[0] > MAX_PATTERNS:
            raise PolicyInvalid(f"a policy holds at most {MAX_PATTERNS} patterns")
        for pattern in patterns:
            compile_pattern(pattern)


def validate_policy(policy: Any) -> dict[str, Any]:
    """The policy if it is well formed (an empty one included); PolicyInvalid otherwise."""
    policy = _check_keys(policy, _TOP_KEYS, "policy")
    if not policy:
        return policy
    if not isinstance(policy.get("id"), str) or not POLICY_ID.match(policy["id"]):
        raise PolicyInvalid("policy.id must be a lowercase slug of at most 64 characters")
    _positive_int(policy.get("version"), "policy.version")
    total = [0]
    for section, keys in (("input", _INPUT_KEYS), ("output", _OUTPUT_KEYS)):
        part = _check_keys(policy.get(section, {}), keys, f"policy.{section}")
        for key in keys - {"blocked"}:
            if key in part:
                _positive_int(part[key], f"policy.{section}.{key}")
        if "blocked" in part:
            _check_rules(part["blocked"], f"policy.{section}.blocked", total)
    rate = _check_keys(policy.get("rate_limit", {}), _RATE_KEYS, "policy.rate_limit")
    if "jobs_per_minute" in rate:
        _positive_int(rate["jobs_per_minute"], "policy.rate_limit.jobs_per_minute")
    return policy


def policy_version(policy: dict[str, Any] | None) -> int | None:
    """The version receipts carry (None: the contract has no policy)."""
    return int(policy["version"]) if policy else None


def jobs_per_minute(policy: dict[str, Any] | None) -> int | None:
    return ((policy or {}).get("rate_limit") or {}).get("jobs_per_minute")


def input_texts(inputs: dict[str, Any]) -> list[str]:
    """The text a job's inputs carry, as the families name it: an embedding job's `texts`,
    a text job's `prompt`. An image carries none the patterns could read."""
    texts = inputs.get("texts")
    if isinstance(texts, list):
        return [t for t in texts if isinstance(t, str)]
    prompt = inputs.get("prompt")
    return [prompt] if isinstance(prompt, str) else []


def _blocked(rules: list[dict[str, Any]], texts: list[str], where: str) -> Violation | None:
    for rule in rules:
        for pattern in rule["patterns"]:
            compiled = compile_pattern(pattern)
            for text in texts:
                if compiled.search(text):
                    return Violation(rule["name"], f"the {where} matches blocked rule {rule['name']!r}")
    return None


def input_violation(policy: dict[str, Any] | None, inputs: dict[str, Any]) -> Violation | None:
    """The first rule the job's inputs break, or None. Limits first (cheap), then patterns."""
    if not policy:
        return None
    rules, texts = policy.get("input") or {}, input_texts(inputs)
    items = len(inputs["texts"]) if isinstance(inputs.get("texts"), list) else 1
    if "max_items" in rules and items > rules["max_items"]:
        return Violation("input.max_items", f"{items} items; the policy allows {rules['max_items']}")
    chars = sum(len(t) for t in texts)
    if "max_chars" in rules and chars > rules["max_chars"]:
        return Violation("input.max_chars", f"{chars} characters of input; the policy allows {rules['max_chars']}")
    max_tokens, ceiling = inputs.get("max_tokens"), (policy.get("output") or {}).get("max_tokens")
    if ceiling is not None and isinstance(max_tokens, int) and max_tokens > ceiling:
        return Violation("output.max_tokens", f"max_tokens {max_tokens}; the policy allows {ceiling}")
    return _blocked(rules.get("blocked", []), texts, "input")


def summary_violation(policy: dict[str, Any] | None, summary: dict[str, int]) -> Violation | None:
    """The limit a peer-to-peer job's declared input summary breaks (docs/p2p.md), or None:
    the registry never sees the texts, so the nodes check the patterns and lengths."""
    if not policy:
        return None
    rules, ceiling = policy.get("input") or {}, (policy.get("output") or {}).get("max_tokens")
    if "max_items" in rules and summary.get("items", 1) > rules["max_items"]:
        return Violation("input.max_items", f"{summary['items']} items; the policy allows {rules['max_items']}")
    if ceiling is not None and summary.get("max_tokens", 0) > ceiling:
        return Violation("output.max_tokens", f"max_tokens {summary['max_tokens']}; the policy allows {ceiling}")
    return None


def has_output_rules(policy: dict[str, Any] | None) -> bool:
    """Whether generated text must be checked before delivery (length or patterns)."""
    rules = (policy or {}).get("output") or {}
    return "max_chars" in rules or bool(rules.get("blocked"))


def output_violation(policy: dict[str, Any] | None, text: str) -> Violation | None:
    """The first output rule a generated text breaks, or None."""
    if not policy:
        return None
    rules = policy.get("output") or {}
    if "max_chars" in rules and len(text) > rules["max_chars"]:
        return Violation("output.max_chars", f"{len(text)} characters of output; the policy allows {rules['max_chars']}")
    return _blocked(rules.get("blocked", []), [text], "output")
