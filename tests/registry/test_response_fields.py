"""A job's response serializer builds its fields from the model once per class
(registry.api.FieldsBuiltOnce), and answers what DRF's ModelSerializer answers."""

from __future__ import annotations

import pytest
from rest_framework import serializers

from registry.api import FieldsBuiltOnce, JobDetailSerializer, JobSummarySerializer
from registry.models import Job
from registry.submit import job_submit
from tests.factories import SubnetFactory, online_node, user_with_credits

pytestmark = pytest.mark.django_db


@pytest.fixture
def job():
    subnet = SubnetFactory()
    online_node(subnet)
    created, _ = job_submit(user=user_with_credits(10), subnet_slug=subnet.slug, inputs={"texts": ["a"]}, idempotency_key="k")
    return created


class ModelBuiltEveryTime(JobDetailSerializer):
    def get_fields(self):
        return serializers.ModelSerializer.get_fields(self)


def test_a_job_response_builds_its_fields_from_the_model_once(job, monkeypatch):
    built = []
    model_fields = serializers.ModelSerializer.get_fields

    def counting(self):
        built.append(type(self))
        return model_fields(self)

    assert JobDetailSerializer(job).data["id"] == str(job.pk)  # the class's fields may be built here, once
    monkeypatch.setattr(serializers.ModelSerializer, "get_fields", counting)
    answers = [JobDetailSerializer(job).data for _ in range(3)]
    assert [cls for cls in built if cls is JobDetailSerializer] == []  # before: one build per response
    expected = ModelBuiltEveryTime(job).data
    assert all(answer == expected for answer in answers)
    assert set(expected) >= {"id", "subnet", "state", "contract", "contract_hash", "result", "partial"}
    assert expected["subnet"] == job.subnet.slug and expected["state"] == "queued"


def test_each_response_binds_fields_of_its_own(job):
    first, second = JobSummarySerializer(job), JobDetailSerializer(job)
    third = JobDetailSerializer(job)
    assert first.fields["state"] is not second.fields["state"] is not third.fields["state"]
    assert second.fields["state"].parent is second and third.fields["state"].parent is third
    page = JobSummarySerializer(Job.objects.all(), many=True).data
    assert [row["id"] for row in page] == [str(job.pk)]
    assert page[0] == {k: v for k, v in JobDetailSerializer(job).data.items() if k in page[0]}


def test_a_field_with_a_child_is_copied_whole():
    class WithChildren(FieldsBuiltOnce, serializers.ModelSerializer):
        tags = serializers.ListField(child=serializers.CharField())

        class Meta:
            model = Job
            fields = ["id", "tags"]

    one, two = WithChildren().fields["tags"], WithChildren().fields["tags"]
    assert one is not two and one.child is not two.child
    assert one.child.parent is one and two.child.parent is two
    assert WithChildren().fields["id"] is not WithChildren().fields["id"]
