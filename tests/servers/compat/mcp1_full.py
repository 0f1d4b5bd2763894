"""An mcp 1.x server, unmodified: FastMCP from mcp.server.fastmcp with the demo tools, resource and prompt,
Context logging and progress, a lifespan, an Image, a resource template, ToolError and 1.x's argument order."""

import base64
from contextlib import asynccontextmanager

from mcp.server.fastmcp import Context, FastMCP, Image
from mcp.server.fastmcp.exceptions import ToolError
from mcp.server.fastmcp.prompts import base

PIXEL = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


@asynccontextmanager
async def lifespan(server: FastMCP):
    yield {"db": "open"}


mcp = FastMCP("Legacy", "Answers with the demo data.", lifespan=lifespan, dependencies=["httpx>=0.27"])


@mcp.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@mcp.resource("demo://greeting")
def greeting() -> str:
    return "Hello from demo"


@mcp.prompt()
def summarize(topic: str) -> str:
    return f"Summarize {topic} briefly."


@mcp.tool()
async def work(steps: int, ctx: Context) -> str:
    """Log, report progress and read the lifespan state."""
    await ctx.info(f"working {steps} steps")
    for step in range(steps):
        await ctx.report_progress(step + 1, steps)
    same = mcp.get_context().request_id == ctx.request_id
    return f"{ctx.fastmcp.name}/{ctx.request_context.lifespan_context['db']}/{steps}/{same}"


@mcp.tool()
def pixel() -> Image:
    return Image(data=PIXEL, format="png")


@mcp.tool()
def refuse(reason: str) -> str:
    raise ToolError(f"refused: {reason}")


@mcp.resource("users://{user_id}/profile")
def profile(user_id: str) -> str:
    return f"profile of {user_id}"


@mcp.prompt()
def review(code: str) -> list[base.Message]:
    return [base.UserMessage(f"Review: {code}"), base.AssistantMessage("Looking.")]


if __name__ == "__main__":
    mcp.run()
