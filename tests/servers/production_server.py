"""A server for the production tests: slow, hanging, failing and large tools, and a lifespan that leaves marks."""

import asyncio
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path

from fastmcp import FastMCP

MARKS = os.environ.get("PRODUCTION_MARKS")  # a file the lifespan appends 'started'/'stopped' to
holding = {"calls": 0}


def mark(word: str) -> None:
    if MARKS:
        with open(MARKS, "a") as f:
            f.write(word + "\n")


@asynccontextmanager
async def lifespan(server):
    mark("started")
    try:
        yield {}
    finally:
        mark("stopped")


mcp = FastMCP("Production", lifespan=lifespan)


@mcp.tool
def echo(text: str, n: int = 0) -> str:
    """Return text and n, so a caller can match each answer to its request."""
    return f"{text}#{n}"


@mcp.tool
async def slow(seconds: float, mark: bool = False) -> str:
    """Sleep, then answer; with mark, note the start and the end in the marks file."""
    if mark:
        globals()["mark"]("slow-started")
    await asyncio.sleep(seconds)
    if mark:
        globals()["mark"]("slow-finished")
    return f"slept {seconds:g}"


@mcp.tool
def blocking(seconds: float) -> str:
    """Block a worker thread (not the event loop), then answer."""
    time.sleep(seconds)
    return f"blocked {seconds}"


@mcp.tool
async def hang() -> str:
    """Hold a resource until cancelled."""
    holding["calls"] += 1
    try:
        await asyncio.Event().wait()
    finally:
        holding["calls"] -= 1
    return "never"


@mcp.tool
def held() -> int:
    """How many hang() calls still hold their resource."""
    return holding["calls"]


@mcp.tool
def fail(message: str) -> str:
    """Raise."""
    raise ValueError(message)


@mcp.tool
def size(text: str) -> int:
    """Return the length of text (for large requests)."""
    return len(text)


@mcp.tool
def payload(kilobytes: int) -> str:
    """Return a large result."""
    return "x" * (kilobytes * 1024)
