"""Property-based tests of the API against its own OpenAPI schema (/api/schema/): schemathesis
generates requests for every operation from the schema, sends them through the real Django
app (its WSGI handler, on the test database) with a real token of a user with credits, and
checks every answer: no server error, a documented status code and content type, and a body
that matches the documented schema (errors included: `{"code", "detail"}`).

Bounded (examples per operation, no deadline) so the module stays well under a minute."""

from __future__ import annotations

import pytest
import schemathesis
from django.core import signals
from django.core.cache import cache
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.factories import served_subnet, user_with_credits

MAX_EXAMPLES = 20


# Loaded at collection, through the app itself: the schema view needs no database.
schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", WSGIHandler())


@pytest.fixture
def app_keeps_the_test_connection():
    """As Django's test client does: a request must not close the test's database connection
    (and with it the transaction that holds the test's data) when it finishes."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def token_headers(db):
    cache.clear()  # no throttle counts left from other tests
    # With a node connected: the docs' example body (registry.api.JOB_SUBMIT_EXAMPLES) is sent
    # as it is, and must be accepted, not refused 503 for want of capacity.
    served_subnet(slug="minilm-embed")
    user = user_with_credits(1000)
    token, _ = Token.objects.get_or_create(user=user)
    return {"Authorization": f"Token {token.key}"}


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@pytest.mark.django_db
def test_every_operation_answers_as_its_schema_says(case, token_headers, app_keeps_the_test_connection):
    # Every check but positive_data_acceptance: a request the schema allows may still break a
    # business rule the schema cannot express (a family's inputs, credits, a license, an
    # unknown subnet), and is rightly refused with a documented {code, detail}.
    case.call_and_validate(headers=token_headers, excluded_checks=[positive_data_acceptance])
