"""A module with no mcp/server/app, but a FastMCP under an unusual name."""

from fastmcp import FastMCP

my_tools = FastMCP("Hidden")
settings = {"debug": True}


def helper():
    return 1
