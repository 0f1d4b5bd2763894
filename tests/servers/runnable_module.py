"""A module that starts its own server, for 'mcprun -m runnable_module'."""

from demo import register
from fastmcp import FastMCP

mcp = register(FastMCP("Demo"))

if __name__ == "__main__":
    mcp.run()
