"""Builds the pydantic-ai agents named in the configuration."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic_ai import Agent
from pydantic_ai.exceptions import UserError
from pydantic_ai.models import Model

from bot.config import DEMO_MODEL, AgentSpec, AppConfig, Settings
from bot.demo import demo_model
from bot.errors import ConfigError


@dataclass(frozen=True)
class BuiltAgent:
    """An agent ready to run, with the spec it was built from and its model's name."""

    name: str
    agent: Agent[None, str]
    spec: AgentSpec
    model_name: str


class AgentRegistry:
    """All configured agents, built once at start-up so that a bad model string fails early."""

    def __init__(
        self, config: AppConfig, settings: Settings, *, model: Model | None = None
    ) -> None:
        """`model`, when given, replaces every agent's model (tests, benchmarks)."""
        self._agents = {
            name: _build(name, spec, settings, override=model)
            for name, spec in config.agents.items()
        }

    def get(self, name: str) -> BuiltAgent:
        try:
            return self._agents[name]
        except KeyError:
            raise ConfigError(f"unknown agent {name!r}") from None

    @property
    def uses_demo_model(self) -> bool:
        return any(built.model_name == DEMO_MODEL for built in self._agents.values())


def _build(name: str, spec: AgentSpec, settings: Settings, *, override: Model | None) -> BuiltAgent:
    model_string = spec.model or settings.model
    model: Model | str
    if override is not None:
        model, model_name = override, override.model_name
    elif model_string == DEMO_MODEL:
        model, model_name = demo_model(), DEMO_MODEL
    else:
        model, model_name = model_string, model_string
    try:
        agent = Agent(model, instructions=spec.instructions, name=name)
    except UserError as exc:
        source = f"agents.{name}.model" if spec.model else "AGENTBOT_MODEL"
        raise ConfigError(f"{source}={model_string!r}: {_one_line(str(exc))}") from None
    return BuiltAgent(name=name, agent=agent, spec=spec, model_name=model_name)


def _one_line(text: str) -> str:
    return " ".join(text.split())
