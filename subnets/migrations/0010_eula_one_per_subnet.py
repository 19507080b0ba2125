"""Opt-in per subnet, step 2 of 3: accepting a license used to opt the user into every
subnet under it, so each existing acceptance becomes one per subnet of its license (same
version, time and address), and nobody loses a subnet they serve today; acceptances of a
license no subnet uses gated nothing and are dropped."""

from django.db import migrations


def one_acceptance_per_subnet(apps, schema_editor):
    EulaAcceptance = apps.get_model("subnets", "EulaAcceptance")
    Subnet = apps.get_model("subnets", "Subnet")
    subnets_of = {}
    for subnet_id, license_id in Subnet.objects.values_list("pk", "license_id").order_by("pk"):
        subnets_of.setdefault(license_id, []).append(subnet_id)
    for acceptance in EulaAcceptance.objects.filter(subnet__isnull=True).order_by("pk"):
        subnet_ids = subnets_of.get(acceptance.license_id, [])
        if not subnet_ids:
            acceptance.delete()
            continue
        first, *others = subnet_ids
        EulaAcceptance.objects.filter(pk=acceptance.pk).update(subnet_id=first)
        for subnet_id in others:
            EulaAcceptance.objects.create(
                user_id=acceptance.user_id,
                subnet_id=subnet_id,
                license_id=acceptance.license_id,
                license_version=acceptance.license_version,
                ip=acceptance.ip,
            )
            # accepted_at is auto_now_add: keep the original moment.
        EulaAcceptance.objects.filter(
            user_id=acceptance.user_id, license_id=acceptance.license_id, subnet_id__in=others
        ).update(accepted_at=acceptance.accepted_at)


class Migration(migrations.Migration):
    dependencies = [
        ("subnets", "0009_eula_per_subnet"),
    ]

    operations = [
        migrations.RunPython(one_acceptance_per_subnet, migrations.RunPython.noop),
    ]
