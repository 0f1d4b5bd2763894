"""A server that imports httpx itself (mcp 2.x no longer depends on it; mcprun bundles it)."""

import httpx
from fastmcp import FastMCP

mcp = FastMCP("Uses httpx")


@mcp.tool
def fetch(path: str) -> str:
    """Fetch from a mock transport: no network, but the real httpx client."""
    transport = httpx.MockTransport(lambda request: httpx.Response(200, text=f"got {request.url.path}"))
    with httpx.Client(transport=transport, base_url="http://example.invalid") as client:
        return client.get(path).text
