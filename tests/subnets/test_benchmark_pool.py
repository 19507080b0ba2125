"""Benchmark pools (issue 11, item 4): the registry computes its own outputs for every suite
in a subnet's benchmark pool, and the demo subnets ship one."""

from __future__ import annotations

import numpy as np
import pytest

from bim_core import protocol
from subnets import defaults, services
from subnets.models import BenchmarkInput, BenchmarkReference
from tests.factories import SubnetFactory

pytestmark = pytest.mark.django_db


def fake_run(subnet, inputs):
    """A stand-in for the subnet's model: one deterministic unit vector per text."""
    rows = [np.random.default_rng(abs(hash(text)) % 2**32).standard_normal(384) for text in inputs["texts"]]
    return np.asarray([r / np.linalg.norm(r) for r in rows], dtype=np.float32)


def test_the_reference_keeps_a_pool_of_suites_each_with_the_registrys_own_outputs(monkeypatch):
    monkeypatch.setattr(services, "trusted_run", fake_run)
    subnet = SubnetFactory()
    pool = defaults.benchmark_pool()
    reference = services.benchmark_reference_compute(subnet=subnet, inputs={"texts": defaults.BENCHMARK_TEXTS}, pool=pool)
    assert [item.inputs for item in reference.pool.order_by("pk")] == pool
    for item in reference.pool.all():
        assert bytes(item.result) == protocol.encode_vectors(fake_run(subnet, item.inputs))
        assert item.shape == [len(item.inputs["texts"]), 384]
    # Computing again replaces the pool rather than growing it.
    services.benchmark_reference_compute(subnet=subnet, inputs={"texts": defaults.BENCHMARK_TEXTS}, pool=pool[:3])
    assert BenchmarkInput.objects.filter(reference=BenchmarkReference.objects.get(subnet=subnet)).count() == 3


def test_the_demo_subnets_have_benchmark_pools_of_distinct_suites():
    for pool in (defaults.benchmark_pool(), defaults.TEXT_BENCHMARK_POOL):
        assert len(pool) >= 4
        assert len({protocol.input_hash(item) for item in pool}) == len(pool)
