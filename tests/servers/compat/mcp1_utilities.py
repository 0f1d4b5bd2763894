"""An mcp 1.x server importing from the package's submodules, with a factory."""

from mcp.server.fastmcp.exceptions import FastMCPError
from mcp.server.fastmcp.prompts.base import UserMessage
from mcp.server.fastmcp.resources import TextResource
from mcp.server.fastmcp.server import Context, FastMCP
from mcp.server.fastmcp.utilities.types import Image


def create_server() -> FastMCP:
    server = FastMCP("Utilities")
    server.add_resource(TextResource(uri="memo://note", name="note", text="a note"))

    @server.tool()
    def kinds(ctx: Context) -> str:
        return f"{issubclass(FastMCPError, Exception)} {Image.__name__} {ctx.fastmcp.name}"

    @server.tool()
    def crash() -> str:
        raise ValueError("it broke")

    @server.prompt()
    def ask(question: str) -> list:
        return [UserMessage(question)]

    return server
