"""agentbot: run pydantic-ai agents inside Slack."""

__version__ = "0.1.0"
