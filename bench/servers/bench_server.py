"""The server every runner serves in the benchmark: BENCH_TOOLS tools (default 10), one of which
returns a payload of any size.

    mcprun bench/servers/bench_server.py             # served by a runner (imported)
    python bench/servers/bench_server.py             # the floor: runs itself, stdio
    python bench/servers/bench_server.py --transport http --port 8123

Tools: echo(text), payload(size) -> 'x' * size, versions() -> the Python, fastmcp and mcp this
process runs on, and tool_3 ... tool_{BENCH_TOOLS-1}, small tools with a two-argument schema.
"""

import os
import sys

from fastmcp import FastMCP

TOOLS = int(os.environ.get("BENCH_TOOLS", "10"))

mcp = FastMCP("bench")


@mcp.tool
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@mcp.tool(output_schema=None)  # the text once, not again as structured content: size bytes on the wire
def payload(size: int) -> str:
    """Return a string of size characters."""
    return "x" * size


@mcp.tool
def versions() -> dict:
    """Name the Python, fastmcp and mcp this server runs on."""
    from importlib.metadata import version

    return {"python": sys.version.split()[0], "fastmcp": version("fastmcp"), "mcp": version("mcp"),
            "executable": sys.executable, "frozen": bool(getattr(sys, "frozen", False))}


def _filler(number: int):
    def tool(count: int, label: str = "") -> str:
        return f"{label}{count * number}"

    tool.__name__ = f"tool_{number}"
    tool.__doc__ = f"Filler tool {number}: multiply count by {number} and prefix label."
    return tool


for _number in range(3, TOOLS):
    mcp.tool(_filler(_number))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="serve the bench server by itself (the floor)")
    parser.add_argument("--transport", default="stdio", help="stdio or http (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address for http (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8000, help="port for http (default: %(default)s)")
    args = parser.parse_args()
    if args.transport == "stdio":
        mcp.run(show_banner=False)
    else:
        mcp.run(transport=args.transport, host=args.host, port=args.port, show_banner=False)
