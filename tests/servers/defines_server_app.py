"""Servers under 'server' and 'app' (no 'mcp'): 'server' must win."""

from demo import register
from fastmcp import FastMCP

app = FastMCP("Decoy app")
server = register(FastMCP("Demo"))


@app.tool
def decoy() -> str:
    """Proves the wrong server was chosen."""
    return "decoy"
