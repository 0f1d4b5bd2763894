"""A stdio server for the proxy-health tests: it will not start while the file named by $BREAKABLE_MARK exists."""

import os
import sys

from fastmcp import FastMCP

if os.path.exists(os.environ["BREAKABLE_MARK"]):
    sys.exit("breakable: broken, as the test asked")

mcp = FastMCP("breakable")


@mcp.tool
def pid() -> int:
    """This process's id."""
    return os.getpid()

if __name__ == "__main__":
    mcp.run()
