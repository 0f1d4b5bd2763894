"""The demo server plus tools that report the process environment (fastmcp.json deployment tests)."""

import os

from demo import register
from fastmcp import FastMCP

mcp = register(FastMCP("Env"))


@mcp.tool
def getenv(name: str) -> str:
    """Return the environment variable's value, or '(unset)'."""
    return os.environ.get(name, "(unset)")


@mcp.tool
def cwd() -> str:
    """Return the server's working directory."""
    return os.getcwd()
