"""Command-line entry points, as console scripts name them (module:function)."""

import argparse

from fastmcp import FastMCP


def main():
    """Parse sys.argv as a console script does, build the server, start it."""
    parser = argparse.ArgumentParser(prog="cli-app")
    parser.add_argument("--greeting", default="hello")
    args = parser.parse_args()
    mcp = FastMCP("CLI app")

    @mcp.tool
    def greet() -> str:
        return args.greeting

    mcp.run()


def does_nothing():
    """Return None, start nothing."""
