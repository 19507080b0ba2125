"""Migrations 0009/0010 (opt-in per subnet): an acceptance made when accepting a license
opted into every subnet under it becomes one acceptance per such subnet, with its version,
time and address, so nobody loses a subnet they serve; one of a license no subnet uses
gated nothing and goes."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("subnets", "0008_subnet_output_dim")]
AFTER = [("subnets", "0011_eula_subnet_required")]


def _subnet(Subnet, license, slug):
    return Subnet.objects.create(
        slug=slug, name=slug, task_type="embedding", model_id="m", model_checksum="ab" * 32, runtime_id="r", license=license
    )


@pytest.mark.django_db(transaction=True)
def test_each_acceptance_becomes_one_per_subnet_of_its_license():
    executor = MigrationExecutor(connection)
    try:
        executor.migrate(BEFORE)
        old = executor.loader.project_state(BEFORE).apps
        License, Subnet = old.get_model("subnets", "License"), old.get_model("subnets", "Subnet")
        EulaAcceptance, User = old.get_model("subnets", "EulaAcceptance"), old.get_model("auth", "User")
        apache = License.objects.create(slug="apache-2.0", version="2.0", name="Apache")
        mit = License.objects.create(slug="mit", version="1", name="MIT")
        orphan = License.objects.create(slug="unused", version="1", name="Unused")
        first, second, other = _subnet(Subnet, apache, "a-first"), _subnet(Subnet, apache, "a-second"), _subnet(Subnet, mit, "m-only")
        ada, bo = User.objects.create(username="ada"), User.objects.create(username="bo")
        kept = EulaAcceptance.objects.create(user=ada, license=apache, license_version="2.0", ip="10.0.0.1")
        EulaAcceptance.objects.create(user=bo, license=mit, license_version="1")
        EulaAcceptance.objects.create(user=bo, license=orphan, license_version="1")

        executor.loader.build_graph()
        executor.migrate(AFTER)

        new = executor.loader.project_state(AFTER).apps.get_model("subnets", "EulaAcceptance")
        rows = {(a.user.username, a.subnet.slug): a for a in new.objects.select_related("user", "subnet")}
        assert set(rows) == {("ada", "a-first"), ("ada", "a-second"), ("bo", "m-only")}
        assert rows[("ada", "a-first")].pk == kept.pk
        copy = rows[("ada", "a-second")]
        assert (copy.license_id, copy.license_version, copy.ip, copy.accepted_at) == (apache.pk, "2.0", "10.0.0.1", kept.accepted_at)
        assert all(a.withdrawn_at is None for a in rows.values())
        assert {first.pk, second.pk, other.pk} == {a.subnet_id for a in rows.values()}
    finally:
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())
