"""A FastMCP server under the default name 'app'."""

from demo import register
from fastmcp import FastMCP

app = register(FastMCP("Demo"))
