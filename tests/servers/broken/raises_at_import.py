"""A server whose module raises while it is imported."""

from fastmcp import FastMCP

mcp = FastMCP("Broken")
raise RuntimeError("config file missing")
