"""'mcp' is not a server here (a plain dict), so the server under 'app' is chosen."""

from demo import register
from fastmcp import FastMCP

mcp = {"name": "not a server"}
app = register(FastMCP("Demo"))
