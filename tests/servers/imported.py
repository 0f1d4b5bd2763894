"""A server that says which modules of a list its process has imported (for the no-cost-when-off tests)."""

import sys

from fastmcp import FastMCP

mcp = FastMCP("imported")


@mcp.tool
def imported(names: list[str]) -> list[str]:
    """The names, of those given, that are in sys.modules."""
    return [name for name in names if name in sys.modules]
