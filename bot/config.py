"""Settings from the environment and agents/commands from `agentbot.toml`.

This is the only module that reads `os.environ` (through pydantic-settings). Everything it
builds is passed down from the composition root.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from bot.errors import ConfigError
from bot.fetch import FetchPolicy
from bot.mcp import McpServerSpec
from bot.tools import ToolLimits, toolset_for

DEMO_MODEL = "demo"
"""The offline demo model: used when no `AGENTBOT_MODEL` is set, needs no key or network."""
DEMO_FAST_MODEL = "demo-fast"
"""A faster demo model, so that `/compare` on the demo compares two speeds."""


class Settings(BaseSettings):
    """Process settings, read from environment variables (docs/ARCHITECTURE.md §6)."""

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
    # Also let the workspace's own admins and owners (Slack `users.info`) use /history.
    history_workspace_admins: bool = Field(default=False, alias="AGENTBOT_HISTORY_WORKSPACE_ADMINS")
    checkpoint_interval: float = Field(
        default=5.0, alias="AGENTBOT_CHECKPOINT_INTERVAL", gt=0, le=3600
    )
    max_concurrent_runs: int = Field(
        default=50, alias="AGENTBOT_MAX_CONCURRENT_RUNS", ge=1, le=10_000
    )
    user_runs_per_minute: int | None = Field(
        default=20, alias="AGENTBOT_USER_RUNS_PER_MINUTE", ge=1
    )
    allowed_users: Annotated[frozenset[str], NoDecode] = Field(
        default=frozenset(), alias="AGENTBOT_ALLOWED_USERS"
    )
    allowed_channels: Annotated[frozenset[str], NoDecode] = Field(
        default=frozenset(), alias="AGENTBOT_ALLOWED_CHANNELS"
    )
    stream_mode: Literal["edit", "native"] = Field(default="edit", alias="AGENTBOT_STREAM_MODE")
    # How native streaming shows tool calls: a task card each, between the text ("timeline",
    # Slack's default), or one plan block of all of them ("plan").
    task_display: Literal["timeline", "plan"] = Field(
        default="timeline", alias="AGENTBOT_TASK_DISPLAY"
    )
    compare_models: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), alias="AGENTBOT_COMPARE_MODELS"
    )

    @field_validator("admins", "allowed_users", "allowed_channels", mode="before")
    @classmethod
    def _split_admins(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("compare_models", mode="before")
    @classmethod
    def _split_models(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _demo_compares_two_speeds(self) -> Settings:
        # /compare falls back to AGENTBOT_MODEL; one demo model would compare it to itself.
        if not self.compare_models and self.model == DEMO_MODEL:
            self.compare_models = (DEMO_MODEL, DEMO_FAST_MODEL)
        return self

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
    token_budget: int | None = Field(default=None, ge=1)
    """Most tokens (in and out) one run may use; the run fails when it would use more."""
    history_budget: int = Field(default=8000, ge=1)
    """Most tokens of a conversation (about four characters a token) that one model request
    sends: the oldest turns are left out first; the newest turn is always sent."""
    tools: list[str] = Field(default_factory=list)
    """Built-in tools: fetch_url, read_thread, current_time."""
    mcp_servers: list[str] = Field(default_factory=list)
    """Names from the `[mcp_servers]` section whose tools this agent may use."""
    tool_limits: ToolLimits = Field(default_factory=ToolLimits)


class TeamSpec(BaseModel):
    """A team: a planner splits the task among roles (agents), a coordinator synthesises."""

    model_config = ConfigDict(extra="forbid")

    planner: str = "planner"
    coordinator: str = "coordinator"
    roles: list[str] = Field(
        default_factory=lambda: ["researcher", "analyst", "writer", "reviewer"], min_length=1
    )
    max_subtasks: int = Field(default=4, ge=1, le=12)
    concurrency: int = Field(default=4, ge=1, le=12)


class StageSpec(BaseModel):
    """One pipeline stage; `prompt` may use {input} (the original input) and {previous}."""

    model_config = ConfigDict(extra="forbid")

    name: str
    agent: str
    prompt: str


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stages: list[StageSpec] = Field(min_length=1)


class CommandSpec(BaseModel):
    """What a slash command does: `ask` one agent, run a `team` or a `pipeline`, or
    `compare` models (`models`, else AGENTBOT_COMPARE_MODELS, else AGENTBOT_MODEL)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["ask", "team", "pipeline", "compare"] = "ask"
    agent: str = "assistant"
    team: str = "default"
    pipeline: str = "default"
    models: list[str] = Field(default_factory=list)


def _role(text: str) -> AgentSpec:
    return AgentSpec(instructions=text + " Answer in Markdown, concisely, for a Slack thread.")


def _default_agents() -> dict[str, AgentSpec]:
    return {
        "assistant": AgentSpec(),
        "planner": AgentSpec(
            instructions=(
                "You plan work for a small team. Split the task into 2 to 4 focused subtasks, "
                "each assigned to exactly one of the roles offered, with clear instructions."
            )
        ),
        "researcher": _role("You are the team's researcher: gather the relevant facts."),
        "analyst": _role("You are the team's analyst: weigh options, risks and trade-offs."),
        "writer": _role("You are the team's writer: draft clear, well-structured text."),
        "reviewer": _role("You are the team's reviewer: find gaps, errors and risks."),
        "coordinator": _role(
            "You coordinate a team: merge the subtask results into one answer, resolve "
            "conflicts, and say plainly which parts are missing because a subtask failed."
        ),
    }


def _default_pipelines() -> dict[str, PipelineSpec]:
    return {
        "default": PipelineSpec(
            stages=[
                StageSpec(
                    name="research",
                    agent="researcher",
                    prompt="Research this topic and list the key facts:\n\n{input}",
                ),
                StageSpec(
                    name="analyze",
                    agent="analyst",
                    prompt="Topic: {input}\n\nAnalyse these research notes:\n\n{previous}",
                ),
                StageSpec(
                    name="summarize",
                    agent="writer",
                    prompt="Topic: {input}\n\nWrite a short summary of this analysis:\n\n"
                    "{previous}",
                ),
            ]
        )
    }


def _default_commands() -> dict[str, CommandSpec]:
    return {
        "/ask": CommandSpec(kind="ask"),
        "/team": CommandSpec(kind="team"),
        "/pipeline": CommandSpec(kind="pipeline"),
        "/compare": CommandSpec(kind="compare"),
    }


class AppConfig(BaseModel):
    """The contents of `agentbot.toml`, merged over the built-in defaults."""

    model_config = ConfigDict(extra="forbid")

    agents: dict[str, AgentSpec] = Field(default_factory=_default_agents)
    teams: dict[str, TeamSpec] = Field(default_factory=lambda: {"default": TeamSpec()})
    pipelines: dict[str, PipelineSpec] = Field(default_factory=_default_pipelines)
    commands: dict[str, CommandSpec] = Field(default_factory=_default_commands)
    fetch: FetchPolicy = Field(default_factory=FetchPolicy)
    mcp_servers: dict[str, McpServerSpec] = Field(default_factory=dict)

    def agent(self, name: str) -> AgentSpec:
        try:
            return self.agents[name]
        except KeyError:
            raise ConfigError(f"agentbot.toml: unknown agent {name!r}") from None

    def check(self) -> None:
        """Every name a command, team or pipeline refers to exists; else `ConfigError`."""
        for name, command in self.commands.items():
            if not name.startswith("/"):
                raise ConfigError(f"agentbot.toml: command {name!r} must start with '/'")
            if command.kind in ("ask", "compare"):
                self.agent(command.agent)
            elif command.kind == "team" and command.team not in self.teams:
                raise ConfigError(f"agentbot.toml: {name} uses unknown team {command.team!r}")
            elif command.kind == "pipeline" and command.pipeline not in self.pipelines:
                raise ConfigError(
                    f"agentbot.toml: {name} uses unknown pipeline {command.pipeline!r}"
                )
        for name, agent in self.agents.items():
            try:
                toolset_for(agent.tools)
            except ValueError as exc:
                raise ConfigError(f"agentbot.toml: agents.{name}.tools: {exc}") from None
            for server in agent.mcp_servers:
                if server not in self.mcp_servers:
                    raise ConfigError(
                        f"agentbot.toml: agents.{name} uses unknown MCP server {server!r}"
                    )
        for team in self.teams.values():
            for member in (team.planner, team.coordinator, *team.roles):
                self.agent(member)
        for pipeline in self.pipelines.values():
            for stage in pipeline.stages:
                self.agent(stage.agent)


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
    merged = {
        section: {**getattr(defaults, section), **data.pop(section, {})}
        for section in ("agents", "teams", "pipelines", "commands")
    }
    try:
        config = AppConfig.model_validate({**merged, **data})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {_first_problem(exc)}") from None
    config.check()
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
    "DEMO_FAST_MODEL",
    "DEMO_MODEL",
    "AgentSpec",
    "AppConfig",
    "CommandSpec",
    "PipelineSpec",
    "Settings",
    "StageSpec",
    "TeamSpec",
    "load_config",
    "load_settings",
    "require",
]
