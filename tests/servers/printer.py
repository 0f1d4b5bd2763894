"""A server that prints to stdout, never flushing, in its lifespan and in a tool (stdout buffered when not a TTY)."""

import contextlib

from demo import register
from fastmcp import FastMCP


@contextlib.asynccontextmanager
async def lifespan(server):
    print("print in the lifespan, at start")
    yield
    print("print in the lifespan, at stop")


mcp = register(FastMCP("Demo", lifespan=lifespan))


@mcp.tool
def shout(text: str) -> str:
    """Print to stdout, then return the text upper-cased."""
    print("print inside a tool call")
    return text.upper()
