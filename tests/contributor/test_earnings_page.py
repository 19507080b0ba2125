"""The earnings page (issue 12, getting paid): each node's earnings and escrow, a Withdraw
form with the minimum and the fee stated, the history with states; a refused amount says
the real balance."""

from __future__ import annotations

import pytest
from django.urls import reverse

from bim_core.money import MICRO
from ledger.models import Withdrawal
from tests.factories import SubnetFactory, online_node
from tests.ledger.test_withdrawals import earn

pytestmark = pytest.mark.django_db


@pytest.fixture
def earner(client):
    keys = online_node(SubnetFactory())
    earn(keys.node, 5 * MICRO, f"node:{keys.node.pk}")
    client.force_login(keys.node.owner)
    return keys.node


def test_the_page_shows_earnings_and_a_withdrawal_lands_pending(client, earner, settings):
    settings.LEDGER_MIN_WITHDRAWAL_MICRO = MICRO
    page = client.get(reverse("contributor:earnings")).content.decode()
    assert f'data-testid="earnings-{earner.pk}">5<' in page
    assert 'data-testid="minimum">1<' in page and "no fee is taken" in page
    answer = client.post(reverse("contributor:earnings"), {"node": str(earner.pk), "credits": "2.5"})
    assert answer.status_code == 302
    withdrawal = Withdrawal.objects.get()
    assert (withdrawal.node_id, withdrawal.amount, withdrawal.state) == (earner.pk, 2_500_000, "pending")
    page = client.get(reverse("contributor:earnings")).content.decode()
    assert 'data-testid="withdrawal-state">pending<' in page


def test_too_much_is_refused_with_the_real_figures(client, earner):
    answer = client.post(reverse("contributor:earnings"), {"node": str(earner.pk), "credits": "7"})
    assert answer.status_code == 200 and not Withdrawal.objects.exists()
    assert "5000000 micro-credits earned, 0 in pending withdrawals: 5000000 available, 7000000 asked" in answer.content.decode()


def test_another_owners_node_cannot_be_chosen(client, earner):
    stranger = online_node(SubnetFactory()).node
    earn(stranger, 5 * MICRO, f"node:{stranger.pk}")
    answer = client.post(reverse("contributor:earnings"), {"node": str(stranger.pk), "credits": "2"})
    assert answer.status_code == 200 and not Withdrawal.objects.exists()
