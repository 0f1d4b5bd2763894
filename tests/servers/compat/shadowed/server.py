"""A server beside files named like bundled packages (mcp.py, types.py, fastmcp/)."""

from mcp.server.fastmcp import FastMCP

mcp = FastMCP("Shadowed")


@mcp.tool()
def echo(text: str) -> str:
    return text
