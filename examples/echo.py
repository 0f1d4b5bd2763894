"""A small FastMCP server: one tool, one resource, one prompt.

    mcprun examples/echo.py                      # stdio
    mcprun examples/echo.py -t http --port 8000  # http://127.0.0.1:8000/mcp
"""

from fastmcp import FastMCP

mcp = FastMCP("Echo")


@mcp.tool
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@mcp.tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@mcp.resource("echo://greeting")
def greeting() -> str:
    """A fixed greeting."""
    return "Hello from mcprun"


@mcp.prompt
def summarize(topic: str) -> str:
    """Ask for a short summary of a topic."""
    return f"Summarize {topic} in one paragraph."
