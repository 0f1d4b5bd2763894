"""An official-SDK MCPServer (mcp 2.x) with a tool that takes its time."""

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("Slow")


@server.tool()
async def slow(seconds: float) -> str:
    """Answer after seconds."""
    await anyio.sleep(seconds)
    return f"slept {seconds:g} s"
