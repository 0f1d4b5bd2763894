"""An mcp 1.x low-level server that builds its Server inside main() and starts itself over stdio."""

import asyncio
import sys

import mcp.server.stdio
import mcp.types as types
from mcp.server import NotificationOptions, Server
from mcp.server.models import InitializationOptions


async def main(greeting: str) -> None:
    server = Server("self-started")

    @server.list_tools()
    async def list_tools() -> list[types.Tool]:
        return [types.Tool(name="greet", description="Greet", inputSchema={"type": "object"})]

    @server.call_tool()
    async def call_tool(name: str, arguments: dict) -> list[types.TextContent]:
        return [types.TextContent(type="text", text=greeting)]

    options = InitializationOptions(server_name="self-started", server_version="0.1",
                                    capabilities=server.get_capabilities(NotificationOptions(), {}))
    async with mcp.server.stdio.stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, options)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "hello"))
