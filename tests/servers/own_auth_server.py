"""A FastMCP server that configures its own authentication (a static bearer token)."""

from fastmcp import FastMCP
from fastmcp.server.auth.providers.jwt import StaticTokenVerifier

mcp = FastMCP("OwnAuth", auth=StaticTokenVerifier({"server-own-token": {"client_id": "tests", "scopes": []}}))


@mcp.tool
def echo(text: str) -> str:
    return text
