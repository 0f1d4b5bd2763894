"""The same echo server, written with the official MCP SDK's MCPServer (mcp 2.x).

    mcprun examples/sdk_echo.py -t sse --port 8001
"""

from mcp.server.mcpserver import MCPServer

server = MCPServer("SDK Echo")


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text
