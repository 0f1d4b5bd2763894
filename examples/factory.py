"""A server made by a factory that reads its server arguments and environment.

    mcprun examples/factory.py:create_server -- --greeting Hi
"""

import argparse
import os

from fastmcp import FastMCP


def create_server() -> FastMCP:
    """Build the server from command-line arguments (after --) and NOTES_OWNER."""
    parser = argparse.ArgumentParser(prog="factory.py")
    parser.add_argument("--greeting", default="Hello")
    options = parser.parse_args()
    owner = os.environ.get("NOTES_OWNER", "world")
    mcp = FastMCP("Greeter")

    @mcp.tool
    def greet() -> str:
        """Greet the owner."""
        return f"{options.greeting}, {owner}!"

    return mcp
