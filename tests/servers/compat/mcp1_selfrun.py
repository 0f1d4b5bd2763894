"""An mcp 1.x server that starts itself with the transport of its choice (SSE)."""

from mcp.server.fastmcp import FastMCP

mcp = FastMCP("Self-starting")


@mcp.tool()
def echo(text: str) -> str:
    return text


if __name__ == "__main__":
    mcp.run(transport="sse")
