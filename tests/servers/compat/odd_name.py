"""One server object, under a name mcprun does not try by default."""

from fastmcp import FastMCP

weather_service = FastMCP("Odd name")


@weather_service.tool
def forecast() -> str:
    return "sunny"
