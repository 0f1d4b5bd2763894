"""A FastMCP server under the default name 'server'."""

from demo import register
from fastmcp import FastMCP

server = register(FastMCP("Demo"))
