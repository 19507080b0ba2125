"""The dispute page (issue 14): the job's two or three results side by side, decoded per
task family (vectors with norms, generated text, image thumbnails), with every pair's
similarity by the family's own verifier and the sentinel's verdict; a result that no longer
decodes is shown as such; resolving still needs `registry.change_dispute`."""

from __future__ import annotations

import numpy as np
import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from bim_core import protocol
from bim_core.png import png_encode
from bim_core.verification import verify_embedding_pair
from registry import dispatch, submit
from registry.models import Assignment, Dispute, SentinelRun
from registry.results import result_record
from subnets import defaults
from tests.factories import SubnetFactory, UserFactory, online_node, result_message, user_with_credits
from tests.images import sample_image
from tests.operator_seed import operator_market

pytestmark = pytest.mark.django_db


@pytest.fixture
def operator(client):
    client.force_login(UserFactory(username="root", is_staff=True, is_superuser=True))
    return client


def dispute_page(client, dispute: Dispute):
    page = client.get(reverse("admin:registry_dispute_change", args=[dispute.pk]))
    assert page.status_code == 200
    return page, page.content.decode()


def disputed(subnet, inputs: dict, results: dict[str, object]) -> Dispute:
    """A job of `subnet` whose nodes sent these signed results, disputed by a sentinel."""
    pool = {keys.node.pk: keys for keys in (online_node(subnet) for _ in range(3))}
    job, _ = submit.job_submit(user=user_with_credits(10), subnet_slug=subnet.slug, inputs=inputs, idempotency_key="d")
    dispatch.job_dispatch(job_id=job.id)
    for assignment in job.assignments.all():
        keys = pool[assignment.node_id]
        result_record(node_id=keys.node.pk, message=result_message(keys, job, assignment, results[assignment.role]))
    run = SentinelRun.objects.create(job=job, similarity=0.5, passed=False, detail="drifted")
    return Dispute.objects.create(job=job, sentinel=run, reason="sentinel re-run drifted")


def test_an_embedding_dispute_shows_three_results_and_their_pairwise_cosines(operator):
    market = operator_market(settled_jobs=0)
    job = market.disputed

    page, body = dispute_page(operator, market.dispute)

    comparison = page.context["comparison"]
    assert [o.assignment.role for o in comparison.outputs] == ["A", "B", "C"]
    assert [(p.a, p.b) for p in comparison.pairs] == [("A", "B"), ("A", "C"), ("B", "C")]
    # The similarities are the verifier's own, the ones the job was settled on.
    tie_break = job.verification["tie_break"]
    by_pair = {(p.a, p.b): p for p in comparison.pairs}
    assert by_pair["A", "C"].similarity == pytest.approx(tie_break["a_c"]["worst"])
    assert by_pair["B", "C"].similarity == pytest.approx(tie_break["b_c"]["worst"])
    assert by_pair["A", "C"].passed and not by_pair["A", "B"].passed and not by_pair["B", "C"].passed
    assert len(by_pair["A", "B"].per_item) == 3
    # Each output: its node, a preview of its vectors and their norms.
    for output in comparison.outputs:
        assert output.kind == "embedding" and output.shape == (3, 384)
        assert output.assignment.node.name in body
        assert output.vectors[0]["norm"] == pytest.approx(1.0, abs=1e-5)
        assert len(output.vectors[0]["values"]) == 4
    a = comparison.outputs[0]
    assert f"{a.vectors[0]['values'][0]:.4f}" in body
    assert f"{by_pair['A', 'C'].similarity:.6f}" in body
    # The sentinel's verdict, and the resolution field while the dispute is open.
    assert "failed, similarity 0.971200 to the registry's own re-run: item 1 cosine 0.9712000 &lt; 0.9999" in body
    assert 'name="resolution"' in body
    assert "<script>" not in body.split('id="dispute-outputs"')[1]  # CSP: no inline script


def test_a_text_dispute_shows_both_generations_side_by_side(operator):
    subnet = SubnetFactory(task_type="text", tolerances={"edit_distance": 0.1}, preprocessing={"max_new_tokens": 16})
    inputs = {"prompt": "Name a colour.", "max_tokens": 8}
    results = {
        "A": {"finish": "stop", "text": "Blue, like the sky.", "tokens": [5, 6, 7, 8, 2]},
        "B": {"finish": "stop", "text": "Green <b>grass</b>.", "tokens": [5, 9, 10, 2]},
    }

    page, body = dispute_page(operator, disputed(subnet, inputs, results))

    comparison = page.context["comparison"]
    assert [(o.kind, o.text, o.finish, o.tokens) for o in comparison.outputs] == [
        ("text", "Blue, like the sky.", "stop", 5),
        ("text", "Green <b>grass</b>.", "stop", 4),
    ]
    assert "Blue, like the sky." in body and "Green &lt;b&gt;grass&lt;/b&gt;." in body  # escaped
    (pair,) = comparison.pairs
    assert pair.metric == "tokens" and not pair.passed
    assert pair.similarity == pytest.approx(1 - 3 / 5)  # 3 edits over 5 tokens
    assert "tokens diverge at position 1" in body


def test_an_image_dispute_shows_thumbnails_of_both_results(operator):
    settings = defaults.image_subnet_settings()
    subnet = SubnetFactory(
        task_type="image",
        tolerances=settings["tolerances"],
        preprocessing=settings["preprocessing"],
        max_items_per_job=1,
        max_chars_per_item=settings["max_chars_per_item"],
    )
    image = sample_image(height=24, width=32)
    honest = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
    forged = np.flipud(honest).copy()

    page, body = dispute_page(
        operator, disputed(subnet, {"image": protocol.b64encode(png_encode(image))}, {"A": honest, "B": forged})
    )

    comparison = page.context["comparison"]
    for output in comparison.outputs:
        assert output.kind == "image" and output.shape == (48, 64, 3)
        assert output.thumbnail.startswith("data:image/png;base64,")
        assert output.thumbnail in body
    (pair,) = comparison.pairs
    assert pair.metric == "ssim" and not pair.passed


def test_a_result_that_no_longer_decodes_is_shown_not_a_server_error(operator):
    market = operator_market(settled_jobs=0)
    Assignment.objects.filter(job=market.disputed, role="C").update(result=b"\0" * 7)

    page, body = dispute_page(operator, market.dispute)

    kinds = {o.assignment.role: o.kind for o in page.context["comparison"].outputs}
    assert kinds == {"A": "embedding", "B": "embedding", "C": "error"}
    assert "Does not decode" in body
    assert [(p.a, p.b) for p in page.context["comparison"].pairs] == [("A", "B")]


def test_the_dispute_page_is_read_for_a_view_only_user_who_cannot_resolve(client):
    market = operator_market(settled_jobs=0)
    user = UserFactory(is_staff=True)
    user.user_permissions.add(Permission.objects.get(content_type__app_label="registry", codename="view_dispute"))
    client.force_login(user)

    page, body = dispute_page(client, market.dispute)

    assert len(page.context["comparison"].outputs) == 3
    assert 'name="resolution"' not in body
    response = client.post(reverse("admin:registry_dispute_change", args=[market.dispute.pk]), {"resolution": "x"})
    assert response.status_code == 403


def test_the_pairwise_similarity_is_the_verifiers_own():
    """Guard against a preview that rounds or renormalises before comparing."""
    market = operator_market(settled_jobs=0)
    from registry.disputes import dispute_comparison

    comparison = dispute_comparison(dispute=market.dispute)
    a, c = comparison.outputs[0].decoded, comparison.outputs[2].decoded
    expected = verify_embedding_pair(a, c, cosine_min=0.9999).worst
    assert comparison.pairs[1].similarity == expected
