"""Servers under names mcprun doesn't guess, and factories."""

from demo import register
from fastmcp import FastMCP

custom = register(FastMCP("Demo"))
not_a_server = {"name": "Demo"}


def create_server():
    return register(FastMCP("Demo"))


async def create_server_async():
    return register(FastMCP("Demo"))


def needs_arguments(name):
    return register(FastMCP(name))


def returns_wrong_type():
    return 42


def raises():
    raise RuntimeError("database unavailable")
