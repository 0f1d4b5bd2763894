"""A server whose tools answer at once, after a while, after progress notes, or after asking the client."""

import asyncio

from fastmcp import Context, FastMCP

mcp = FastMCP("Speaks")


@mcp.tool
def quick(text: str) -> str:
    """Answer at once."""
    return text


@mcp.tool
async def slow(seconds: float) -> str:
    """Answer after a while, saying nothing meanwhile."""
    await asyncio.sleep(seconds)
    return f"slept {seconds:g}"


@mcp.tool
async def progress(steps: int, ctx: Context) -> str:
    """Report each step's progress, then answer."""
    for step in range(1, steps + 1):
        await ctx.report_progress(step, steps)
    return f"{steps} steps"


@mcp.tool
async def ask(ctx: Context) -> str:
    """Ask the client for a name (elicitation), then answer with it."""
    answer = await ctx.elicit("Your name?", response_type=str)
    return f"hello {answer.data}" if answer.action == "accept" else answer.action
