"""A fastmcp 2.x/3.x-era file: constructor settings and tag filters, mount(prefix, server), import_server,
old module paths, and a ctx.sample() call fastmcp 4 cannot serve."""

import os

from fastmcp import Context, FastMCP
from fastmcp.tools.tool import Tool  # fastmcp 4: fastmcp.tools.base

weather = FastMCP("Weather")


@weather.tool
def forecast(city: str) -> str:
    return f"sunny in {city}"


units = FastMCP("Units")


@units.tool
def celsius(fahrenheit: float) -> float:
    return round((fahrenheit - 32) * 5 / 9, 1)


mcp = FastMCP("Old style", host="127.0.0.1", port=int(os.environ.get("OLD_PORT", "8000")),
              exclude_tags={"internal"}, on_duplicate_tools="error", dependencies=["httpx"])
mcp.mount("weather", weather)
mcp.import_server(units, prefix="units")


@mcp.tool(tags={"public"})
def kinds() -> str:
    return f"{Tool.__module__}"


@mcp.tool(tags={"internal"})
def hidden() -> str:
    return "should not be listed"


@mcp.tool(tags={"public"})
async def summarize(text: str, ctx: Context) -> str:
    return await ctx.sample(f"Summarize: {text}")


@mcp.tool(tags={"public"}, enabled=False)  # fastmcp 2.x: registered, not listed
def switched_off() -> str:
    return "should not be listed"


@mcp.tool(enabled=True, tags={"public"})
def switched_on() -> str:
    return "on"


@mcp.prompt(enabled=False)
def silent_prompt() -> str:
    return "should not be listed"


@mcp.resource("memo://off", enabled=False)
def silent_resource() -> str:
    return "should not be listed"
