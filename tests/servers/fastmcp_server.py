from demo import register
from fastmcp import FastMCP

mcp = register(FastMCP("Demo"))
