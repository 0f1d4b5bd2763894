"""A FastMCP server that keeps a value in its session's state (fastmcp's state store, py-key-value)."""

from fastmcp import Context, FastMCP

mcp = FastMCP("State")


@mcp.tool
async def remember(value: str, ctx: Context) -> str:
    """Keep value in this session's state."""
    await ctx.set_state("value", value)
    return "kept"


@mcp.tool
async def recall(ctx: Context) -> str:
    """Return the value this session kept, or 'nothing'."""
    return await ctx.get_state("value") or "nothing"
