"""A module with no mcp/server/app, but two FastMCPs under unusual names (one would be used)."""

from fastmcp import FastMCP

my_tools = FastMCP("Hidden")
more_tools = FastMCP("Also hidden")
settings = {"debug": True}


def helper():
    return 1
