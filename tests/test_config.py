"""Settings and agentbot.toml: defaults, merging, and one clear line for every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import AppConfig, Settings, load_config, load_settings
from bot.errors import ConfigError


def test_defaults_work_with_nothing_set():
    settings = load_settings()
    assert settings.model == "demo" and settings.port == 3000
    assert settings.database_url == "sqlite+aiosqlite:///./agentbot.db"
    config = AppConfig()
    config.check()
    assert set(config.commands) == {"/ask", "/team", "/pipeline", "/compare"}
    assert [s.name for s in config.pipelines["default"].stages] == [
        "research",
        "analyze",
        "summarize",
    ]


def test_lists_from_the_environment(monkeypatch):
    monkeypatch.setenv("AGENTBOT_ADMINS", "U1, U2,,")
    monkeypatch.setenv("AGENTBOT_COMPARE_MODELS", "openai-chat:a, anthropic:b")
    settings = load_settings()
    assert settings.admins == {"U1", "U2"}
    assert settings.compare_models == ("openai-chat:a", "anthropic:b")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PORT", "eighty", "PORT:"),
        ("SLACK_API_URL", "slack.com/api", "SLACK_API_URL:"),
        ("AGENTBOT_STREAM_MODE", "telepathy", "AGENTBOT_STREAM_MODE:"),
        ("AGENTBOT_UPDATE_INTERVAL", "0", "AGENTBOT_UPDATE_INTERVAL:"),
    ],
)
def test_bad_settings_name_the_variable(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def write(tmp_path: Path, text: str) -> Settings:
    path = tmp_path / "agentbot.toml"
    path.write_text(text)
    return Settings(AGENTBOT_CONFIG=str(path))


def test_toml_merges_over_the_defaults(tmp_path):
    settings = write(
        tmp_path,
        """
[agents.support]
instructions = "Be kind."
model = "openai-chat:gpt-4o-mini"

[commands."/support"]
agent = "support"

[teams.default]
roles = ["researcher", "writer"]
max_subtasks = 2

[pipelines.short]
stages = [{ name = "only", agent = "writer", prompt = "Summarise {input}" }]

[commands."/short"]
kind = "pipeline"
pipeline = "short"
""",
    )
    config = load_config(settings)
    assert config.agents["support"].instructions == "Be kind."
    assert "assistant" in config.agents and "/ask" in config.commands
    assert config.commands["/support"].kind == "ask"
    assert config.teams["default"].roles == ["researcher", "writer"]
    assert config.pipelines["short"].stages[0].name == "only"
    assert "default" in config.pipelines


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[commands."/x"]\nagent = "nobody"', "unknown agent 'nobody'"),
        ('[commands."x"]\nagent = "assistant"', "must start with '/'"),
        ('[commands."/t"]\nkind = "team"\nteam = "ghosts"', "unknown team 'ghosts'"),
        ('[teams.default]\nroles = ["ghost"]', "unknown agent 'ghost'"),
        ("[agents.a]\nidle_timeout = -1", "idle_timeout"),
        ("[agents.a]\nsurprise = 1", "surprise"),
        ("this is not toml", "cannot read"),
    ],
)
def test_toml_mistakes_are_one_clear_line(tmp_path, text, message):
    settings = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(settings)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(Settings(AGENTBOT_CONFIG=str(tmp_path / "nope.toml")))
