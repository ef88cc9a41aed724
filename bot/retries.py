"""The one retry policy for model requests: ours, with the provider SDK's own retries off.

Each failed model request (not the whole run) is attempted again, up to `retries` times, when
its error is transient and the request failed before its first token: a stream that broke
after text was shown is never restarted. Between attempts: exponential backoff with full
jitter, or the provider's `Retry-After` when that is longer. A run's earlier requests, and the
tools they called, are kept: only the failed request is sent again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from pydantic_ai import RunContext
from pydantic_ai.capabilities import AbstractCapability
from pydantic_ai.exceptions import (
    ModelConnectionError,
    ModelRateLimitError,
    ModelServerError,
    ModelUnavailableError,
    RetryModelRequest,
)
from pydantic_ai.messages import ModelResponse
from pydantic_ai.models import ModelRequestContext
from pydantic_ai.settings import ModelSettings

log = logging.getLogger(__name__)

TRANSIENT_ERRORS = (
    ModelRateLimitError,
    ModelUnavailableError,
    ModelServerError,
    ModelConnectionError,
)
# Given to every run: the SDKs (OpenAI, Anthropic, Groq, ...) would otherwise retry twice
# more inside each of our attempts, with their own waits.
SDK_RETRIES_OFF: ModelSettings = {"max_retries": 0}


class TransientRetries(AbstractCapability[Any]):
    """Attempts a model request again after a transient error, at most `retries` times.

    `backoff(n)` gives the wait before retry `n` (1-based); a longer `Retry-After` wins.
    The agent calls this only for a request that failed before handing over its stream.
    """

    def __init__(self, *, retries: int, backoff: Callable[[int], float]) -> None:
        self.retries = retries
        self.backoff = backoff

    async def on_model_request_error(
        self, ctx: RunContext[Any], *, request_context: ModelRequestContext, error: Exception
    ) -> ModelResponse:
        retry = request_context.attempt  # the retry this would be: attempts made so far
        if not isinstance(error, TRANSIENT_ERRORS) or retry > self.retries:
            raise error
        delay = max(self.backoff(retry), error.retry_after or 0.0)
        log.info("model request failed (%s); retry %d in %.2fs", error, retry, delay)
        await asyncio.sleep(delay)
        raise RetryModelRequest()
