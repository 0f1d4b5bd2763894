"""A server file with a syntax error on line 6."""

from fastmcp import FastMCP

mcp = FastMCP("Broken")
def oops(:
    pass
