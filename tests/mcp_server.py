"""A tiny MCP server for the tests, over stdio: `python tests/mcp_server.py`."""

from __future__ import annotations

import os

try:
    from mcp.server.mcpserver import MCPServer
except ImportError:  # the MCP SDK 1.x calls it FastMCP
    from mcp.server.fastmcp import FastMCP as MCPServer  # type: ignore[no-redef]

server = MCPServer("agentbot-test", log_level="ERROR")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two whole numbers."""
    return a + b


@server.tool()
def decisions(topic: str) -> str:
    """What the team's decision log holds on `topic` (a stand-in for a team's own system)."""
    return f"Decision log, {topic}: launch moved to Wednesday on 2026-11-30."


@server.tool()
def pid() -> int:
    """The server's process id (lets a test stop it)."""
    return os.getpid()


if __name__ == "__main__":
    server.run("stdio")
