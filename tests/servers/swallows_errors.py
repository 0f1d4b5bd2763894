"""A command-line entry point that catches any failure to start its server, prints it and exits 1
(as office-word-mcp-server's does)."""

import sys

from fastmcp import FastMCP

mcp = FastMCP("Swallows")


def main():
    try:
        mcp.run()
    except Exception as exc:
        print(f"Error starting server: {exc}")
        sys.exit(1)
