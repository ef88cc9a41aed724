"""The one small error tree of agentbot.

`ConfigError` is the operator's mistake (a bad setting), `InputError` the user's (a bad
prompt or filter), and `RunFailed` a run that could not finish. Each carries a message fit
to show a person as it is.
"""

from __future__ import annotations


class BotError(Exception):
    """Base of every error agentbot raises on purpose."""


class ConfigError(BotError):
    """A missing or invalid setting; the message names it."""


class InputError(BotError):
    """Input that cannot be acted on; the message says what is wrong and how to fix it."""


class RunFailed(BotError):
    """An agent run ended without an answer."""
