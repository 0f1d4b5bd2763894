"""Async factories that fail: one raises, one returns the wrong type."""


async def create_server_async():
    raise RuntimeError("cache unreachable")


async def returns_none_async():
    pass
