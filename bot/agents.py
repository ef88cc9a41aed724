"""Builds the pydantic-ai agents named in the configuration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic_ai import Agent
from pydantic_ai.exceptions import UserError
from pydantic_ai.models import Model
from pydantic_ai.toolsets import AbstractToolset

from bot.config import AgentSpec, AppConfig, Settings
from bot.demo import DEMO_SPEEDS, TIME_TOOL, demo_model
from bot.errors import ConfigError
from bot.history import history_budget
from bot.mcp import McpServers
from bot.text import one_line
from bot.tools import ToolDeps, tool_guard, toolset_for

ModelFactory = Callable[[str, str], Model]
"""Gives the model for (agent name, model string): lets tests script each agent apart."""


@dataclass(frozen=True)
class BuiltAgent:
    """An agent ready to run, with the spec it was built from and its model's name."""

    name: str
    agent: Agent[ToolDeps, str]
    spec: AgentSpec
    model_name: str


class AgentRegistry:
    """All configured agents, built once at start-up so that a bad model string fails early."""

    def __init__(
        self,
        config: AppConfig,
        settings: Settings,
        *,
        model: Model | ModelFactory | None = None,
        mcp: McpServers | None = None,
    ) -> None:
        """`model`, when given, replaces the agents' models (tests, benchmarks): one model
        for all, or a factory called with each agent's name and model string. `mcp` holds
        the started MCP servers whose tools agents may use."""
        self._settings = settings
        self._override = model
        self._mcp = mcp
        self._agents = {
            name: self._build(name, spec, spec.model or settings.model)
            for name, spec in config.agents.items()
        }
        self._variants: dict[tuple[str, str], BuiltAgent] = {}

    def get(self, name: str) -> BuiltAgent:
        try:
            return self._agents[name]
        except KeyError:
            raise ConfigError(f"unknown agent {name!r}") from None

    def with_model(self, name: str, model_string: str) -> BuiltAgent:
        """Agent `name` on another model (for /compare); built once, then reused."""
        key = (name, model_string)
        if key not in self._variants:
            self._variants[key] = self._build(name, self.get(name).spec, model_string)
        return self._variants[key]

    @property
    def uses_demo_model(self) -> bool:
        return any(built.model_name in DEMO_SPEEDS for built in self._agents.values())

    def _build(self, name: str, spec: AgentSpec, model_string: str) -> BuiltAgent:
        model: Model | str
        if isinstance(self._override, Model):
            model, model_name = self._override, self._override.model_name
        elif self._override is not None:
            model, model_name = self._override(name, model_string), model_string
        elif model_string in DEMO_SPEEDS:
            model, model_name = demo_model(model_string), model_string
        else:
            model, model_name = model_string, model_string
        tools = spec.tools
        if model_name in DEMO_SPEEDS and self._override is None and TIME_TOOL not in tools:
            tools = [*tools, TIME_TOOL]  # so that the demo can show a tool call
        toolsets: list[AbstractToolset[ToolDeps]] = []
        if tools:
            toolsets.append(toolset_for(tools))
        if spec.mcp_servers:
            if self._mcp is None:
                raise ConfigError(f"agents.{name}: MCP servers are not started")
            toolsets.extend(self._mcp.toolsets(spec.mcp_servers))
        try:
            agent = Agent(
                model,
                instructions=spec.instructions,
                name=name,
                deps_type=ToolDeps,
                toolsets=toolsets,
                capabilities=[
                    *([tool_guard()] if toolsets else []),
                    history_budget(spec.history_budget),
                ],
            )
        except UserError as exc:
            source = f"agents.{name}.model" if spec.model else "AGENTBOT_MODEL"
            raise ConfigError(f"{source}={model_string!r}: {one_line(str(exc))}") from None
        return BuiltAgent(name=name, agent=agent, spec=spec, model_name=model_name)
