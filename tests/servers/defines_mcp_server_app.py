"""Servers under all three default names: 'mcp' must win, then 'server', then 'app'.

Only 'mcp' has the demo tools; the others have a 'decoy' tool instead.
"""

from demo import register
from fastmcp import FastMCP

app = FastMCP("Decoy app")
server = FastMCP("Decoy server")
mcp = register(FastMCP("Demo"))


@app.tool
@server.tool
def decoy() -> str:
    """Proves the wrong server was chosen."""
    return "decoy"
