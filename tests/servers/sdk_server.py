"""A server built on the official SDK's high-level MCPServer (mcp 2.x)."""

from demo import register
from mcp.server.mcpserver import MCPServer

server = register(MCPServer("Demo"))
