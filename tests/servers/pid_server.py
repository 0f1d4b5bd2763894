"""A server for the worker tests: which process answers, at once, after a pause, or holding its event loop."""

import asyncio
import os
import time

from fastmcp import FastMCP

mcp = FastMCP("Pids")


@mcp.tool
async def pid() -> int:
    """Return the PID of the process that answers."""
    return os.getpid()


@mcp.tool
async def slow_pid(seconds: float, started: str = "") -> int:
    """Wait, then return the PID of the process that answers; with started, first write 'started' to that file."""
    if started:
        with open(started, "w") as f:
            f.write("started")
    await asyncio.sleep(seconds)
    return os.getpid()


@mcp.tool
async def busy_pid(seconds: float) -> int:
    """Hold this process's event loop (so new connections go to another worker), then return its PID."""
    time.sleep(seconds)
    return os.getpid()
