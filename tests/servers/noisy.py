"""A server that prints to stdout at import time and inside a tool."""

import os
import subprocess
import sys

from demo import register
from fastmcp import FastMCP

print("noise at import time")
os.write(1, b"raw fd noise at import time\n")
subprocess.run([sys.executable, "-c", "print('child process noise')"], check=False)

mcp = register(FastMCP("Demo"))


@mcp.tool
def shout(text: str) -> str:
    """Print to stdout, then return the text upper-cased."""
    print("noise inside a tool")
    sys.stdout.flush()
    os.write(1, b"raw fd noise inside a tool\n")
    return text.upper()
