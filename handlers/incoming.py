"""What comes in from Slack, before any listener sees it.

Over HTTP, a request's signature is checked on its raw bytes before anything parses the
body: an unsigned request is refused (401) whatever it holds, and a signed one that cannot
be parsed is refused as malformed (400). On both transports (HTTP and Socket Mode), every
string of a request's body is cleaned once (NUL, lone surrogates) before listeners read it.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Mapping

from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.signature import SignatureVerifier

from bot.text import clean_strings


class Rejected(Exception):
    """A request refused before Bolt sees it: the HTTP status and why (one line, for the log)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


class RawBodyVerifier(SignatureVerifier):
    """Slack's v0 signature checked on the raw bytes Slack signed (so a body that is not
    UTF-8 is still told signed or not), and a timestamp header that is not a whole number
    taken for a bad signature instead of an error."""

    def is_valid(self, body: str | bytes, timestamp: str | None, signature: str | None) -> bool:
        if not (timestamp and timestamp.isascii() and timestamp.isdecimal()):
            return False
        if not (signature and signature.isascii()):  # `compare_digest` refuses other text
            return False
        return super().is_valid(body=body, timestamp=timestamp, signature=signature)

    def generate_signature(self, *, timestamp: str, body: str | bytes) -> str | None:
        if isinstance(body, str):
            return super().generate_signature(timestamp=timestamp, body=body)
        base = b"v0:" + timestamp.encode() + b":" + body
        return "v0=" + hmac.new(self.signing_secret.encode(), base, hashlib.sha256).hexdigest()


def bolt_request(
    body: bytes,
    *,
    headers: Mapping[str, str],
    query: str,
    verifier: RawBodyVerifier | None,
) -> AsyncBoltRequest:
    """The Bolt request for an HTTP request to `/slack/events`, once its signature is checked.

    Raises `Rejected`: 401 when it is not signed with our secret (or no secret is set: then
    nothing can be verified), 400 when it is signed but its body is not UTF-8, not JSON
    where JSON is due (the body, or a form's `payload` field), or not a JSON object.
    """
    timestamp = headers.get("X-Slack-Request-Timestamp")
    signature = headers.get("X-Slack-Signature")
    if verifier is None:
        raise Rejected(401, "no signing secret is set, so no request can be verified")
    if timestamp is None or signature is None:
        raise Rejected(401, "not signed (no signature or timestamp header)")
    if not verifier.is_valid(body, timestamp, signature):
        raise Rejected(401, f"bad signature or stale timestamp ({timestamp[:20]!r})")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(400, f"signed, but the body is not UTF-8 ({exc.reason})") from None
    try:
        request = AsyncBoltRequest(body=text, query=query, headers=headers)  # type: ignore[arg-type]
    except (ValueError, TypeError, AttributeError, LookupError, RecursionError) as exc:
        # Bolt parses the body, then reads it as a dict: any failure there is a malformed body.
        raise Rejected(400, f"signed, but the body is malformed ({type(exc).__name__})") from None
    if not isinstance(request.body, dict):
        raise Rejected(400, "signed, but the body is not a JSON object")
    return request


async def clean_request_text(
    req: AsyncBoltRequest, resp: BoltResponse, next: Callable[[], Awaitable[None]]
) -> BoltResponse:
    """Bolt middleware: clean every string of the request's body (slash command text, event
    text, actions, `/history` filters) before any listener reads it, so that a NUL or a lone
    surrogate from a user fails neither a database write nor an encoder later on."""
    clean_strings(req.body)
    await next()
    return resp
