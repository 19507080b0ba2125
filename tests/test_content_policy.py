"""bim_core.content_policy: a policy is validated strictly (no pattern that could backtrack
for long, no oversized list), and a job's inputs or a text output breaking it are named by
the rule they break."""

from __future__ import annotations

import time

import pytest

from bim_core import content_policy as cp
from bim_core.contracts import ContractInvalid, validate_contract
from subnets import defaults

POLICY = {
    "id": "test",
    "version": 2,
    "input": {
        "max_items": 3,
        "max_chars": 100,
        "blocked": [{"name": "example.weapons", "patterns": [r"\b(?:nerve agent|sarin)\b"]}],
    },
    "output": {"max_tokens": 16, "max_chars": 40, "blocked": [{"name": "out.secret", "patterns": [r"\bsecret\d+\b"]}]},
    "rate_limit": {"jobs_per_minute": 5},
}


def test_the_shipped_default_policies_are_valid():
    for policy in (defaults.EMBEDDINGS_POLICY, defaults.IMAGE_POLICY, defaults.TEXT_POLICY):
        assert cp.validate_policy(policy) is policy
    assert cp.validate_policy({}) == {}


@pytest.mark.parametrize(
    "pattern",
    [
        r"(a+)+b",  # nested quantifier: exponential backtracking
        r"(a|aa)*c",  # quantified alternation: exponential too
        r"a*a*a*b",  # overlapping repeats: polynomial of high degree
        r"(?=a)a",  # lookaround
        r"(a)\1",  # backreference
        r"(?i)a",  # inline flag
        r"(?P<n>a)",  # named group
        r"\Aa",  # anchor JavaScript lacks
        r"a?b?c?d",  # more than two optionals
        r"a{0,1000}",  # bounded, but too wide
        "x" * (cp.MAX_PATTERN_CHARS + 1),
        "(",
        "",
    ],
)
def test_it_refuses_patterns_that_could_be_slow_or_mean_something_else_in_javascript(pattern):
    with pytest.raises(cp.PolicyInvalid):
        cp.compile_pattern(pattern)


def test_it_accepts_word_lists_classes_and_one_repeat():
    for pattern in (r"\bnerve agent\b", r"\b(?:bomb|weapon)s?\b", r"[\d -]+", r"\b\d{4}-\d{4}\b", r"a.*b"):
        cp.compile_pattern(pattern)


def test_an_accepted_pattern_stays_fast_on_a_hostile_text():
    compiled = cp.compile_pattern(r"a.*b")
    started = time.monotonic()
    assert compiled.search("a" * 4000) is None
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize(
    "change",
    [
        {"id": "Not A Slug"},
        {"version": 0},
        {"version": True},
        {"surprise": 1},
        {"input": {"max_chars": -1}},
        {"input": {"blocked": [{"name": "a", "patterns": []}]}},
        {"input": {"blocked": [{"name": "a", "patterns": ["x"]}, {"name": "a", "patterns": ["y"]}]}},
        {"input": {"blocked": [{"name": f"r{i}", "patterns": ["x"]} for i in range(cp.MAX_RULES + 1)]}},
        {"input": {"blocked": [{"name": f"r{i}", "patterns": ["x"] * 60} for i in range(5)]}},
        {"rate_limit": {"jobs_per_minute": 0}},
    ],
)
def test_it_refuses_a_malformed_or_oversized_policy(change):
    with pytest.raises(cp.PolicyInvalid):
        cp.validate_policy({**POLICY, **change})


@pytest.mark.parametrize(
    ("inputs", "rule"),
    [
        ({"texts": ["a", "b", "c", "d"]}, "input.max_items"),
        ({"texts": ["x" * 101]}, "input.max_chars"),
        ({"prompt": "hello", "max_tokens": 17}, "output.max_tokens"),
        ({"texts": ["fine", "How is SARIN made?"]}, "example.weapons"),
        ({"prompt": "about a nerve agent", "max_tokens": 4}, "example.weapons"),
    ],
)
def test_an_input_that_breaks_a_rule_is_named_by_it(inputs, rule):
    violation = cp.input_violation(POLICY, inputs)
    assert violation is not None and violation.rule == rule
    assert violation.reason == f"content_policy:{rule}"


def test_inputs_the_policy_allows_pass_and_no_policy_allows_everything():
    assert cp.input_violation(POLICY, {"texts": ["Sarinas are fine", "b"]}) is None
    assert cp.input_violation(POLICY, {"image": "iVBOR..."}) is None
    assert cp.input_violation({}, {"texts": ["sarin"]}) is None
    assert cp.input_violation(None, {"texts": ["sarin"]}) is None


def test_an_output_that_breaks_a_rule_is_named_by_it():
    assert cp.output_violation(POLICY, "it was secret42 all along").rule == "out.secret"
    assert cp.output_violation(POLICY, "y" * 41).rule == "output.max_chars"
    assert cp.output_violation(POLICY, "a harmless answer") is None


def test_the_contract_refuses_a_policy_it_could_not_enforce():
    with pytest.raises(ContractInvalid, match="policy"):
        validate_contract(_contract({"id": "x", "version": 1, "input": {"blocked": [{"name": "a", "patterns": ["(a+)+"]}]}}))
    validate_contract(_contract(POLICY))


def _contract(policy):
    return {
        "job_id": "j",
        "model_id": "m",
        "model_checksum": "ab" * 32,
        "runtime_id": "r",
        "determinism": {},
        "tolerances": {},
        "input_hash": "cd" * 32,
        "limits": {"latency_ms": 1000},
        "session_key_pub": "A" * 43 + "=",
        "policy": policy,
    }
