"""An mcp 1.x server that chooses its own HTTP settings in the constructor and on mcp.settings."""

import os

from mcp.server.fastmcp import FastMCP

mcp = FastMCP(name="Configured", streamable_http_path="/custom", sse_path="/events", json_response=True)
mcp.settings.port = int(os.environ.get("SETTINGS_PORT", "8000"))


@mcp.tool()
def where() -> str:
    return f"{mcp.settings.streamable_http_path} {mcp.settings.port}"
