"""A server inside a package, using relative imports (fastmcp run fails on these)."""

from demo import register
from fastmcp import FastMCP

from .helpers import NAME

mcp = register(FastMCP(NAME))
