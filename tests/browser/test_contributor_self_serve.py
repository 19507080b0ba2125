"""Issue 12, must-show #2: a new contributor, from the site alone, in real (headless,
Debian) Chromium against the real market (daphne, a Celery worker with beat, a Python node
of another owner on PostgreSQL and Redis): signs up, opts into one subnet only (a twin
subnet under the same license stays out), computes verified jobs until the earnings pass
the withdrawal minimum, names a payout destination, withdraws; an operator approves in the
admin; `settlement_export` lists the payout to that destination and `ledger_check` passes."""

from __future__ import annotations

import io
import json

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from bim_core.money import micro_to_text
from bim_sdk import Client
from ledger.models import Account, AccountKind, Withdrawal
from registry.models import Node
from subnets.models import EulaAcceptance, Subnet
from tests.browser.conftest import sign_up, wait_for
from tests.factories import TEST_IBAN
from tests.market import running_market

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(480)]

PASSWORD = "computing for credits 42"
MINIMUM_MICRO = 2_000  # BIM_MIN_WITHDRAWAL_MICRO for this market: a few jobs' earnings
TEXTS = ["A stranger's browser earns credits.", "Two nodes agree, both are paid."]


def _earnings(node_id) -> int:
    account = Account.objects.filter(kind=AccountKind.NODE_EARNINGS, node_id=node_id).first()
    return 0 if account is None else account.balance  # made with the node's first payout


def test_a_new_contributor_opts_into_one_subnet_earns_and_is_paid_out(tmp_path, browser):
    env = {"BIM_MIN_WITHDRAWAL_MICRO": str(MINIMUM_MICRO)}
    with running_market(tmp_path, contributors="bob", nodes={"bob": "minilm-embed"}, **env) as (url, tokens, _):
        embed = Subnet.objects.get(slug="minilm-embed")
        twin = Subnet.objects.get(pk=embed.pk)
        twin.pk, twin.slug, twin.name = None, "minilm-embed-twin", "MiniLM embeddings (twin)"
        twin.save()  # the same license: opting into one must not opt into the other
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(30_000)
        try:
            sign_up(page, url, "wendy", PASSWORD)
            wait_for(page, "window.bim && window.bim.phase === 'no subnet'")

            page.click("[data-testid=opt-in-minilm-embed]")
            assert page.locator("[data-testid=terms]").is_visible()
            page.check("#id_accept")
            page.click("[data-testid=accept-license]")
            page.wait_for_url(f"{url}/contribute/")
            assert page.locator("[data-testid=opted-in-minilm-embed]").is_visible()
            assert page.locator("[data-testid=opt-in-minilm-embed-twin]").is_visible()  # still to review
            wendy = get_user_model().objects.get(username="wendy")
            assert list(EulaAcceptance.objects.filter(user=wendy).values_list("subnet__slug", flat=True)) == ["minilm-embed"]

            wait_for(page, "window.bim && window.bim.benchmark && window.bim.benchmark.passed === true", timeout=240_000)
            assert page.locator("[data-testid=serving-minilm-embed]").inner_text() == "serving in this browser"
            node_id = page.evaluate("bim.nodeId")
            node = Node.objects.get(pk=node_id)
            assert list(node.subnets.values_list("slug", flat=True)) == ["minilm-embed"]

            # Users' jobs pair the browser with bob's node until the earnings pass the minimum.
            client = Client(url, tokens["demo-user"], timeout=30)
            jobs = 0
            while _earnings(node_id) < MINIMUM_MICRO:
                assert jobs < 20, f"20 jobs earned {_earnings(node_id)} micro-credits"
                job = client.submit_embeddings("minilm-embed", TEXTS, idempotency_key=f"earn-{jobs}")
                assert client.wait(job["id"], timeout=120)["state"] == "settled"
                jobs += 1
            earned = _earnings(node_id)

            # The Earnings page: a destination first (the password guards it), then Withdraw.
            page.goto(f"{url}/contribute/earnings/")
            assert page.locator("[data-testid=no-payout-destination]").is_visible()
            page.select_option("#id_method", "iban")
            page.fill("#id_address", "DE89 3704 0044 0532 0130 00")
            page.fill("#id_password", PASSWORD)
            page.click("[data-testid=set-payout-destination]")
            assert TEST_IBAN in page.locator("[data-testid=payout-destination]").inner_text()
            assert page.locator(f"[data-testid=earnings-{node_id}]").inner_text() == micro_to_text(earned)
            page.select_option("#id_node", node_id)
            page.fill("#id_credits", micro_to_text(MINIMUM_MICRO))
            page.click("[data-testid=withdraw]")
            assert page.locator("[data-testid=withdrawal-state]").first.inner_text() == "pending"
            withdrawal = Withdrawal.objects.get(requested_by=wendy)
            assert (withdrawal.amount, withdrawal.destination) == (MINIMUM_MICRO, f"iban:{TEST_IBAN}")
        finally:
            context.close()

        # The operator approves it in the admin, with a permission to decide withdrawals.
        operator = get_user_model().objects.create_superuser("opal", password=PASSWORD)
        admin = browser.new_context()
        try:
            desk = admin.new_page()
            desk.goto(f"{url}/admin/login/?next=/admin/ledger/withdrawal/")
            desk.fill("#id_username", operator.username)
            desk.fill("#id_password", PASSWORD)
            desk.click("input[type=submit]")
            desk.wait_for_url(f"{url}/admin/ledger/withdrawal/")
            assert f"iban:{TEST_IBAN}" in desk.content()
            desk.check(f"input[name=_selected_action][value='{withdrawal.pk}']")
            desk.select_option("select[name=action]", "approve")
            desk.click("button[name=index]")
            desk.wait_for_url(f"{url}/admin/ledger/withdrawal/")
        finally:
            admin.close()
        withdrawal.refresh_from_db()
        assert withdrawal.state == "approved" and withdrawal.decided_by == operator
        assert _earnings(node_id) == earned - MINIMUM_MICRO

        out, err = io.StringIO(), io.StringIO()
        call_command("settlement_export", stdout=out, stderr=err)
        assert f"{node_id},wendy,iban:{TEST_IBAN},{MINIMUM_MICRO}\n" in out.getvalue()
        summary = json.loads(err.getvalue())
        checked = io.StringIO()
        call_command("ledger_check", stdout=checked)
    print(json.dumps({"jobs_to_minimum": jobs, "earned_micro": earned, "withdrawn_micro": MINIMUM_MICRO, "batch": summary, "ledger_check": checked.getvalue().strip()[:200]}))
