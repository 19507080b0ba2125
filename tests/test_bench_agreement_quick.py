"""Smoke test of bench/agreement.py (hypothesis H1): `--quick` runs every honest
configuration and every adversary of the three families (embedding, image, text) on a few
real inputs with the subnets' real models and tolerances (no services). Honest
configurations must agree, the forgeries that save work must be refused, the boundary
probes must sit on either side of the tolerance, and a colluding pair must pass 2-of-2 and
fail every honeypot."""

from __future__ import annotations

import pytest

from tests.bench_quick import bench_quick

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

# Strategies refused every time in the full runs (docs/verification.md); the others pass on
# some inputs by design (a replay of equal token ids, a small image patch, a near-tie token).
REFUSED = {
    "embedding": ("random_output", "other_input", "nearest_other_input", "perturbed_just_outside_tau"),
    "image": (
        "random_output", "other_input", "same_crop_shifted_1px", "bicubic_instead_of_model",
        "nearest_instead_of_model", "denoising_build_of_the_model", "blur_sigma_0.5", "patch_16px_plus_40",
        "perturbed_just_outside_tau",
    ),
    "text": (
        "random_tokens", "truncated_finish_stop_no_token", "truncated_finish_length", "one_forged_token",
        "right_tokens_other_text",
    ),
}


def test_agreement_quick_tells_honest_from_forged():
    report = bench_quick("agreement.py", database_suffix=None, timeout=400)
    families = report["families"]
    assert {name: family["inputs"] for name, family in families.items()} == {"embedding": 60, "image": 3, "text": 4}
    for name, family in families.items():
        honest = family["honest"]
        assert honest["pairs"] == len(honest["configs"]) * family["inputs"], name
        assert honest["false_rejects"] == 0 and honest["agreement_rate"] == 1.0, (name, honest["configs"])
        adversaries = family["adversaries"]
        for strategy in REFUSED[name]:
            assert adversaries[strategy]["jobs"] > 0, (name, strategy)
            assert adversaries[strategy]["false_accepts"] == 0, (name, strategy, adversaries[strategy])
        if "perturbed_just_inside_tau" in adversaries:  # within tolerance is agreement, by definition
            inside = adversaries["perturbed_just_inside_tau"]
            assert inside["false_accepts"] == inside["jobs"] > 0, name
        colluders = adversaries["colluding_pair"]
        assert colluders["accepted_2_of_2"] == colluders["jobs"] > 0, name
        assert colluders["honeypot_detection_per_honeypot"] == 1.0, name
