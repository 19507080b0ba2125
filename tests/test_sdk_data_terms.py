"""The SDK and `bim` before a user's first job on a subnet (issue 15): the registry refuses
the job until the user acknowledges what contributors see; the SDK raises a typed error
with the links, reads and acknowledges the terms; the command line shows them and asks
once (or takes --yes), acknowledging through the API, which remembers. Against the real
registry (pytest-django's live server), as tests/test_sdk_cli.py runs it."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from rest_framework.authtoken.models import Token

from bim_sdk import BimError, Client, DataTermsNotAcknowledged
from bim_sdk.cli_errors import EXIT_REFUSED, EXIT_UNREACHABLE
from registry.models import Job
from subnets import data_terms
from subnets.lifecycle import subnet_data_terms_set
from subnets.models import UserDataAcknowledgement
from tests.factories import SubnetFactory, online_node, served_subnet, unit_vectors, user_with_credits
from tests.test_sdk_cli import TEXTS, bim, settle_when_submitted

pytestmark = [pytest.mark.timeout(120), pytest.mark.django_db(transaction=True)]


@pytest.fixture
def market(live_server, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Like tests/test_sdk_cli.py's, with a user who never acknowledged any data terms."""
    user = user_with_credits(10, acknowledge_data_terms=False)
    token = Token.objects.create(user=user).key
    monkeypatch.setenv("BIM_URL", live_server.url)
    monkeypatch.setenv("BIM_TOKEN", token)
    subnet = SubnetFactory()
    return {
        "url": live_server.url,
        "token": token,
        "user": user,
        "subnet": subnet,
        "nodes": [online_node(subnet) for _ in range(3)],
    }


def answering(monkeypatch: pytest.MonkeyPatch, *answers: str) -> list[str]:
    """A person at a terminal who answers the prompts in turn; what was asked is kept."""
    asked: list[str] = []
    pending = list(answers)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)

    def reply() -> str:
        assert pending, "asked more often than expected"
        asked.append("asked")
        return pending.pop(0)

    monkeypatch.setattr("builtins.input", reply)
    return asked


def test_the_client_raises_a_typed_refusal_with_absolute_links(market):
    subnet = served_subnet()
    client = Client(market["url"], market["token"], retries=0)

    with pytest.raises(DataTermsNotAcknowledged) as refused:
        client.submit(subnet.slug, {"texts": TEXTS})

    error = refused.value
    assert isinstance(error, BimError) and error.status == 403
    assert (error.subnet, error.terms_version) == (subnet.slug, 1)
    assert error.terms_url == f"{market['url']}/api/v1/subnets/{subnet.slug}/data-terms/"
    assert error.acknowledge_url == f"{market['url']}/developer/data-terms/{subnet.slug}/"
    assert "contributors' devices see the texts you send" in error.detail
    assert not Job.objects.exists()


def test_the_client_reads_and_acknowledges_the_terms_then_submits(market):
    subnet = served_subnet()
    client = Client(market["url"], market["token"], retries=0)

    terms = client.data_terms(subnet.slug)
    assert terms["acknowledged_at"] is None and "What contributors see" in terms["text"]
    acknowledged = client.acknowledge_data_terms(subnet.slug, terms["version"])

    assert acknowledged["acknowledged_at"] is not None
    assert client.submit(subnet.slug, {"texts": TEXTS})["state"] == "queued"
    client.withdraw_data_terms(subnet.slug)
    with pytest.raises(DataTermsNotAcknowledged):
        client.submit(subnet.slug, {"texts": TEXTS})


def test_the_client_gets_a_stale_version_refused(market):
    subnet = served_subnet()
    client = Client(market["url"], market["token"], retries=0)
    subnet_data_terms_set(subnet=subnet, text="changed")

    with pytest.raises(BimError) as refused:
        client.acknowledge_data_terms(subnet.slug, 1)

    assert (refused.value.status, refused.value.code) == (409, "data_terms_version_mismatch")


def test_a_script_without_yes_is_refused_with_what_to_run(market, capsys):
    slug = market["subnet"].slug

    status, out, err = bim(capsys, "embed", slug, *TEXTS)

    assert status == EXIT_REFUSED and out == ""
    assert err.startswith("bim: HTTP 403 data_terms_not_acknowledged: jobs[0]: contributors' devices see the texts you send")
    assert f"bim terms {slug} --acknowledge" in err and "--yes" in err
    assert not Job.objects.exists() and not UserDataAcknowledgement.objects.exists()


def test_a_person_who_says_no_submits_nothing(market, capsys, monkeypatch):
    asked = answering(monkeypatch, "n")

    status, _, err = bim(capsys, "embed", market["subnet"].slug, *TEXTS)

    assert status == EXIT_REFUSED and asked == ["asked"]
    assert "What contributors see: the texts you send" in err and "[y/N]" in err
    assert "not acknowledged: nothing was submitted" in err
    assert not Job.objects.exists() and not UserDataAcknowledgement.objects.exists()


def test_a_person_is_asked_once_and_the_registry_remembers(market, capsys, monkeypatch):
    asked = answering(monkeypatch, "y")
    settler = settle_when_submitted(market, unit_vectors(len(TEXTS), seed=3))

    status, out, err = bim(capsys, "embed", market["subnet"].slug, *TEXTS, "--json")
    settler.join(30)

    assert settler.failures == [] and status == 0, err  # type: ignore[attr-defined]
    assert asked == ["asked"] and json.loads(out)["state"] == "settled"
    assert "Acknowledge these terms (version 1) and submit? [y/N]" in err
    row = UserDataAcknowledgement.objects.get(user=market["user"])
    assert (row.subnet_id, row.terms_version, row.ip) == (market["subnet"].pk, 1, "127.0.0.1")

    # Acknowledged: the next command submits without asking (a second question would fail);
    # nobody settles this job, so it waits out a short timeout (exit 3).
    status, _, err = bim(capsys, "embed", market["subnet"].slug, "one more", "--timeout", "0.5")
    assert status == EXIT_UNREACHABLE, err
    assert asked == ["asked"] and Job.objects.count() == 2


def test_yes_acknowledges_without_asking(market, capsys, monkeypatch):
    asked = answering(monkeypatch)
    settler = settle_when_submitted(market, unit_vectors(len(TEXTS), seed=4))

    status, _, err = bim(capsys, "embed", market["subnet"].slug, *TEXTS, "--yes")
    settler.join(30)

    assert settler.failures == [] and status == 0, err  # type: ignore[attr-defined]
    assert asked == [] and f"acknowledged the data-handling terms of {market['subnet'].slug} (version 1)" in err
    assert data_terms.data_terms_acknowledged(user=market["user"], subnet=market["subnet"])


def test_bim_terms_shows_acknowledges_and_withdraws(market, capsys):
    slug = market["subnet"].slug

    status, out, _ = bim(capsys, "terms", slug)
    assert status == 0 and "What contributors see: the texts you send" in out and "not acknowledged" in out

    status, out, _ = bim(capsys, "terms", slug, "--acknowledge", "--json")
    shown = json.loads(out)
    assert status == 0 and shown["version"] == 1 and shown["acknowledged_at"] is not None
    assert shown["acknowledge_url"] == f"{market['url']}/developer/data-terms/{slug}/"

    status, out, _ = bim(capsys, "terms", slug, "--withdraw")
    assert status == 0 and "not acknowledged" in out
    assert not data_terms.data_terms_acknowledged(user=market["user"], subnet=market["subnet"])
