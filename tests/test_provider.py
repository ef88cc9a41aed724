"""The real provider path: `openai-chat:` against an OpenAI-compatible server on loopback."""

from __future__ import annotations

import pytest
from pydantic_ai import models

from bot.models import RunStatus
from tests.openai_server import FakeOpenAI
from tests.test_ask import answer_text


@pytest.fixture
async def fake_openai(monkeypatch: pytest.MonkeyPatch):
    server = FakeOpenAI(chunks=["Hello", " from", " a real", " provider", " path."])
    await server.start()
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setattr(models, "ALLOW_MODEL_REQUESTS", True)  # only loopback is reachable here
    yield server
    await server.close()


async def test_openai_chat_model_streams_into_slack(start_bot, emulator, fake_openai):
    bot = await start_bot(AGENTBOT_MODEL="openai-chat:gpt-test")
    await bot.command("hello provider")
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.output == "Hello from a real provider path."
    assert run.model == "openai-chat:gpt-test"
    # Token counts come from the provider's usage chunk, exactly.
    assert (run.input_tokens, run.output_tokens, run.requests) == (11, 7, 1)
    assert not run.usage_estimated, "reported by the provider, not estimated"
    assert "11 in / 7 out tokens" in str(emulator.messages("C123")[0].blocks)
    [request] = fake_openai.requests
    assert request["model"] == "gpt-test" and request["stream"] is True
    assert request["messages"][-1]["content"] == "hello provider"
    assert answer_text(emulator.messages("C123")[0]) == run.output


async def test_provider_http_error_is_shown_and_recorded(start_bot, emulator, fake_openai):
    fake_openai.fail_status = 400
    bot = await start_bot(AGENTBOT_MODEL="openai-chat:gpt-test")
    await bot.command("hello provider")
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.FAILED
    assert "HTTP 400" in run.error
    assert len(fake_openai.requests) == 1, "a 400 is not transient: no retry"


async def test_a_provider_that_keeps_failing_gets_one_try_and_our_retries_only(
    start_bot, emulator, fake_openai
):
    # One retry policy: the provider SDK's own retries are off, so the server sees exactly
    # 1 + `retries` attempts (2 by default), not ours stacked on the SDK's (up to 9).
    fake_openai.fail_status = 503
    bot = await start_bot(AGENTBOT_MODEL="openai-chat:gpt-test")
    await bot.command("hello provider")
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.FAILED and "HTTP 503" in run.error
    assert len(fake_openai.requests) == 3


async def test_a_provider_that_recovers_within_the_retries_answers(
    start_bot, emulator, fake_openai
):
    fake_openai.fail_status, fake_openai.fail_first = 503, 2
    bot = await start_bot(AGENTBOT_MODEL="openai-chat:gpt-test")
    await bot.command("hello provider")
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.SUCCEEDED, run.error
    assert run.output == "Hello from a real provider path."
    assert len(fake_openai.requests) == 3
    assert answer_text(emulator.messages("C123")[0]) == run.output


async def test_a_rate_limited_request_waits_for_retry_after(start_bot, emulator, fake_openai):
    fake_openai.fail_status, fake_openai.fail_first, fake_openai.retry_after = 429, 1, "1"
    bot = await start_bot(AGENTBOT_MODEL="openai-chat:gpt-test")
    await bot.command("hello provider")
    [run] = await bot.wait_for_run()
    assert run.status is RunStatus.SUCCEEDED, run.error
    first, second = fake_openai.arrived
    assert second - first >= 1.0, "waited as long as the provider asked"
