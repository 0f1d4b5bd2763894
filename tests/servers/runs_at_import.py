"""A server file that starts its server when imported (no __main__ guard)."""

from demo import register
from fastmcp import FastMCP

mcp = register(FastMCP("Demo"))
mcp.run()
