"""The OpenAI-compatible API (issue 12) with OpenAI's own `openai` client, end to end on
the real market (daphne, a Celery worker, two node processes): embeddings come back in
OpenAI's shape with a BIM receipt that verifies; models are the subnets; refusals are
OpenAI's error objects with its status codes, and a revoked key is 401."""

from __future__ import annotations

import openai
import pytest
from django.contrib.auth import get_user_model

from bim_sdk import Client
from bim_sdk.openai_receipts import verify_embeddings_response
from developer import keys
from tests.market import running_market

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

TEXTS = ["Owls hunt mostly at night.", "Verification needs two independent results."]


def test_openai_client_gets_verified_embeddings_and_openai_shaped_refusals(tmp_path):
    pair = {name: "minilm-embed" for name in ("alice", "bob")}
    with running_market(tmp_path, contributors="alice,bob", nodes=pair) as (url, tokens, _):
        user = get_user_model().objects.get(username="demo-user")
        row, key = keys.api_key_create(user=user, name="openai test")
        api = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=120)
        registry_key = Client(url, tokens["demo-user"]).registry_key()

        assert "minilm-embed" in {m.id for m in api.models.list().data}

        raw = api.embeddings.with_raw_response.create(model="minilm-embed", input=TEXTS)
        response = raw.parse()
        assert [item.index for item in response.data] == [0, 1]
        assert len(response.data[0].embedding) == 384 and response.usage.prompt_tokens > len(TEXTS)
        answer = response.model_dump()
        vectors = verify_embeddings_response(answer, registry_key=registry_key, texts=TEXTS)
        assert vectors.shape == (2, 384)
        assert raw.headers["BIM-Job-Id"] == answer["bim"]["job_id"]

        single = api.embeddings.create(model="minilm-embed", input=TEXTS[0], encoding_format="base64")
        verify_embeddings_response(single.model_dump(), registry_key=registry_key, texts=[TEXTS[0]])

        with pytest.raises(openai.NotFoundError) as unknown:
            api.embeddings.create(model="no-such-subnet", input="x")
        assert unknown.value.code == "unknown_subnet"
        with pytest.raises(openai.BadRequestError) as tokens_given:
            api.embeddings.create(model="minilm-embed", input=[[1, 2, 3]])
        assert tokens_given.value.body["type"] == "invalid_request_error"

        keys.api_key_revoke(user=user, key_id=row.pk)
        with pytest.raises(openai.AuthenticationError) as revoked:
            api.embeddings.create(model="minilm-embed", input="after revoking")
        assert revoked.value.status_code == 401 and revoked.value.code == "invalid_api_key"
