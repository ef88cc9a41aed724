"""Settings from the environment and agents/commands from `agentbot.toml`.

This is the only module that reads `os.environ` (through pydantic-settings). Everything it
builds is passed down from the composition root.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from bot.errors import ConfigError

DEMO_MODEL = "demo"
"""The offline demo model: used when no `AGENTBOT_MODEL` is set, needs no key or network."""


class Settings(BaseSettings):
    """Process settings, read from environment variables (DESIGN.md §3)."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    slack_bot_token: str | None = Field(default=None, alias="SLACK_BOT_TOKEN")
    slack_signing_secret: str | None = Field(default=None, alias="SLACK_SIGNING_SECRET")
    slack_app_token: str | None = Field(default=None, alias="SLACK_APP_TOKEN")
    slack_api_url: str = Field(default="https://slack.com/api/", alias="SLACK_API_URL")
    model: str = Field(default=DEMO_MODEL, alias="AGENTBOT_MODEL", min_length=1)
    database_url: str = Field(
        default="sqlite+aiosqlite:///./agentbot.db", alias="AGENTBOT_DATABASE_URL"
    )
    config_path: Path | None = Field(default=None, alias="AGENTBOT_CONFIG")
    admins: Annotated[frozenset[str], NoDecode] = Field(
        default=frozenset(), alias="AGENTBOT_ADMINS"
    )
    port: int = Field(default=3000, alias="PORT", ge=1, le=65535)
    # Tuning knobs, documented in the README.
    update_interval: float = Field(default=1.0, alias="AGENTBOT_UPDATE_INTERVAL", gt=0, le=60)
    chat_update_per_minute: int = Field(
        default=50, alias="AGENTBOT_CHAT_UPDATE_PER_MINUTE", ge=1, le=10_000
    )
    max_prompt_chars: int = Field(default=8000, alias="AGENTBOT_MAX_PROMPT_CHARS", ge=1)
    shutdown_grace: float = Field(default=30.0, alias="AGENTBOT_SHUTDOWN_GRACE", ge=0)

    @field_validator("admins", mode="before")
    @classmethod
    def _split_admins(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("slack_api_url")
    @classmethod
    def _slash_terminated(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value if value.endswith("/") else value + "/"

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError("must be a SQLAlchemy URL such as sqlite+aiosqlite:///./agentbot.db")
        return value


class AgentSpec(BaseModel):
    """One agent: its model, its instructions and its time limits."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    instructions: str = "You are a helpful assistant in a Slack workspace. Answer in Markdown."
    idle_timeout: float = Field(default=60.0, gt=0)
    total_timeout: float = Field(default=600.0, gt=0)
    retries: int = Field(default=2, ge=0, le=10)


class CommandSpec(BaseModel):
    """What a slash command does."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["ask"] = "ask"
    agent: str = "assistant"


class AppConfig(BaseModel):
    """The contents of `agentbot.toml`, merged over the built-in defaults."""

    model_config = ConfigDict(extra="forbid")

    agents: dict[str, AgentSpec] = Field(default_factory=lambda: {"assistant": AgentSpec()})
    commands: dict[str, CommandSpec] = Field(default_factory=lambda: {"/ask": CommandSpec()})

    def agent(self, name: str) -> AgentSpec:
        try:
            return self.agents[name]
        except KeyError:
            raise ConfigError(f"agentbot.toml: unknown agent {name!r}") from None


def load_settings() -> Settings:
    """Read the settings from the environment; a bad one is a `ConfigError` naming it."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(_first_problem(exc)) from None
    except SettingsError as exc:
        raise ConfigError(str(exc)) from None


def load_config(settings: Settings) -> AppConfig:
    """Read `agentbot.toml` (from `AGENTBOT_CONFIG`, else `./agentbot.toml` if present)."""
    path = settings.config_path
    if path is None:
        default = Path("agentbot.toml")
        if not default.is_file():
            return AppConfig()
        path = default
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"AGENTBOT_CONFIG: no such file: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    defaults = AppConfig()
    agents = {**defaults.agents, **data.pop("agents", {})}
    commands = {**defaults.commands, **data.pop("commands", {})}
    try:
        config = AppConfig(agents=agents, commands=commands, **data)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_problem(exc)}") from None
    for name, command in config.commands.items():
        if not name.startswith("/"):
            raise ConfigError(f"{path}: command {name!r} must start with '/'")
        config.agent(command.agent)
    return config


def require(settings: Settings, *names: str) -> None:
    """Raise `ConfigError` naming the first of the given settings that is unset."""
    for name in names:
        if not getattr(settings, name):
            alias = Settings.model_fields[name].alias
            raise ConfigError(f"{alias} is not set")


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    field = Settings.model_fields.get(loc[0]) if loc else None
    if field is not None and field.alias:
        loc[0] = field.alias
    where = ".".join(loc) or "settings"
    return f"{where}: {error['msg']}"


__all__ = [
    "DEMO_MODEL",
    "AgentSpec",
    "AppConfig",
    "CommandSpec",
    "Settings",
    "load_config",
    "load_settings",
    "require",
]
