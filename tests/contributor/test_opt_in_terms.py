"""The opt-in page states the terms plainly (issue 12): what a credit is worth, what a job
pays and how it is split, escrow, what gets slashed and why, what the browser sees, how
to withdraw; each figure from the subnet and the settings, not from prose that can drift."""

from __future__ import annotations

import pytest
from django.urls import reverse

from tests.factories import SubnetFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_the_opt_in_page_states_the_subnets_terms_in_figures(client, settings):
    settings.BIM_MICRO_PER_MINOR_UNIT = 1_000_000
    settings.LEDGER_MIN_WITHDRAWAL_MICRO = 2_000_000
    subnet = SubnetFactory(
        split_node_a_bp=4000, split_node_b_bp=4000, split_registry_bp=2000, escrow_share_bp=1000,
        escrow_required_micro=1_500_000, honeypot_slash_bp=5000,
    )
    client.force_login(UserFactory())
    page = client.get(reverse("contributor:opt-in", args=[subnet.slug])).content.decode()
    for figure in (
        "1 credit = 1 USD cent",
        "gets 40 % of the price; the registry keeps 20 %",
        "10 % of each payout goes to your escrow until it holds 1.5 credits",
        "costs 50 % of your escrow",
        "3 active strikes ban your node for 24 hours",
        "receives the users&#x27; texts",
        "at least 2 credits",
    ):
        assert figure in page, figure
