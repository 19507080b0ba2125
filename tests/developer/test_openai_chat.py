"""Chat and text completions through OpenAI's `openai` client on the text subnet (issue 12,
Must show 3), end to end on the real market (two SmolLM2 node processes): streamed tokens
arrive before the job settles, the last chunk carries the receipt, and the verified text
is what was streamed."""

from __future__ import annotations

import time

import openai
import pytest
from django.contrib.auth import get_user_model

from bim_sdk import Client
from bim_sdk.openai_receipts import verify_text_response
from developer import keys
from registry.models import Job
from subnets import defaults
from tests.market import running_market

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

PROMPT, MAX_TOKENS = "Write a short poem about the sea.", 40


def test_streamed_chat_tokens_arrive_before_settling_and_the_final_message_verifies(tmp_path):
    pair = {name: defaults.TEXT_SLUG for name in ("alice", "bob")}
    with running_market(tmp_path, contributors="alice,bob", nodes=pair) as (url, tokens, _):
        user = get_user_model().objects.get(username="demo-user")
        _, key = keys.api_key_create(user=user, name="chat test")
        api = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=200)
        registry_key = Client(url, tokens["demo-user"]).registry_key()

        arrivals, pieces, last = [], [], None
        stream = api.chat.completions.create(
            model=defaults.TEXT_SLUG,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if delta:
                arrivals.append(time.time())
                pieces.append(delta)
            last = chunk
        bim = last.model_dump()["bim"]
        verified = verify_text_response(bim, registry_key=registry_key, prompt=PROMPT, max_tokens=MAX_TOKENS)
        assert "".join(pieces) == verified["text"] and not bim.get("streamed_text_replaced")
        assert last.choices[0].finish_reason == verified["finish"]
        assert last.usage.completion_tokens == len(verified["tokens"])
        settled_at = Job.objects.get(pk=bim["job_id"]).finished_at.timestamp()
        assert arrivals and arrivals[0] < settled_at  # tokens came while the nodes generated

        plain = api.completions.create(model=defaults.TEXT_SLUG, prompt=PROMPT, max_tokens=MAX_TOKENS)
        again = verify_text_response(plain.model_dump()["bim"], registry_key=registry_key, prompt=PROMPT, max_tokens=MAX_TOKENS)
        assert plain.choices[0].text == again["text"] == verified["text"]  # greedy: the same text

        with pytest.raises(openai.BadRequestError) as sampled:
            api.chat.completions.create(
                model=defaults.TEXT_SLUG, messages=[{"role": "user", "content": "hi"}], temperature=0.8
            )
        assert sampled.value.code == "unsupported_sampling"
