"""The seams: each place mcprun uses a private part of another project, checked against the bundled versions.

An upgrade that moves one of them fails here, by the seam's name, rather than silently doing nothing
(a body limit left at the SDK's 4 MiB, a burst of connections taken by one worker).
"""

import asyncio
import contextlib
import json
import os
import re
import socket
import subprocess
import sys

import anyio
import pytest
from helpers import ROOT

sys.path.insert(0, str(ROOT))
import mcprun  # noqa: E402

TIMEOUT = 10.0  # seconds for anything below to happen


def test_every_seam_is_named_in_the_seams_section():
    """The private names mcprun uses appear in the seams section and nowhere else."""
    source = (ROOT / "mcprun.py").read_text()
    start = source.index("# -- seams:")
    end = source.index("\n# -- ", start + 1)
    outside = source[:start] + source[end:]
    for private in ("_accept_connection", "server_state", "force_exit", "AppStatus", "_types_namespace",
                    "_mcp_server", "_lowlevel_server", "_post_message_app", "max_body_size", "_bootstrap",
                    "_PYI_", "LD_LIBRARY_PATH_ORIG", "h11_impl", "httptools_impl", "pip._internal", "getattr(sys, \"frozen\"",
                    "_run_sse_writer", "_wire_base"):
        assert private in source[start:end], private
        assert private not in outside, f"{private} used outside the seams section"


def test_asyncio_accepts_one_connection_per_wake_up():
    seen = []

    async def main():
        loop = asyncio.get_running_loop()
        original = loop._accept_connection

        def recording(protocol_factory, listener, sslcontext=None, server=None, backlog=100, *args, **kwargs):
            seen.append(backlog)
            return original(protocol_factory, listener, sslcontext, server, backlog, *args, **kwargs)

        loop._accept_connection = recording
        assert mcprun.accept_one_at_a_time(loop) is True
        accepted = []
        server = await loop.create_server(lambda: Accepted(accepted), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        with anyio.fail_after(TIMEOUT):
            while len(accepted) < 5:
                await asyncio.sleep(0.01)
        for client in clients:
            client.close()
        server.close()

    class Accepted(asyncio.Protocol):
        def __init__(self, accepted):
            accepted.append(self)

    asyncio.run(main())
    assert seen and set(seen) == {1}, seen


@pytest.mark.parametrize("parser", ["httptools", "h11"])
def test_uvicorn_server_parts(parser, monkeypatch):
    """uvicorn's server and each HTTP/1.1 protocol mcprun builds on (h11's where httptools is not installed:
    mcprun.py from source in an environment of its own), with the guards on: the cap, the read deadline."""
    import uvicorn

    if parser == "h11":
        monkeypatch.setitem(sys.modules, "httptools", None)  # uvicorn's httptools protocol cannot import
        monkeypatch.delitem(sys.modules, "uvicorn.protocols.http.httptools_impl", raising=False)
    protocol = mcprun.guarded_protocol(2, 0.5)
    assert protocol.__mro__[2].__module__ == f"uvicorn.protocols.http.{parser}_impl", protocol.__mro__

    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    async def main():
        sock = mcprun.bind_socket("127.0.0.1", 0)
        server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="off",
                                               http=protocol))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        with anyio.fail_after(TIMEOUT):
            while not server.started:
                await asyncio.sleep(0.01)
        assert mcprun.uvicorn_listeners(server), "no listeners"
        assert mcprun.uvicorn_forced(server) is False
        first = socket.create_connection(sock.getsockname())
        with anyio.fail_after(TIMEOUT):
            while not mcprun.uvicorn_connections(server):
                await asyncio.sleep(0.01)
        # headers that stop coming: 408 once the read deadline (0.5 s) has passed, and the connection closed
        first.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")
        first.settimeout(TIMEOUT)
        assert (await asyncio.to_thread(first.recv, 100)).startswith(b"HTTP/1.1 408")
        # headers past 16 KiB: refused and closed (h11's parser says 400 itself, before mcprun's 431)
        large = socket.create_connection(sock.getsockname())
        large.settimeout(TIMEOUT)
        with contextlib.suppress(OSError):
            large.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 40000)
        assert (await asyncio.to_thread(large.recv, 100)).startswith(
            b"HTTP/1.1 400" if parser == "h11" else b"HTTP/1.1 431"), parser
        large.close()
        # the guarded protocol's cap of 2: one more connection closes the idle one that waited longest, and is served
        second, third = (socket.create_connection(sock.getsockname()) for _ in range(2))
        second.settimeout(TIMEOUT)
        third.settimeout(TIMEOUT)
        with anyio.fail_after(TIMEOUT):
            while len(mcprun.uvicorn_connections(server)) < 2:
                await asyncio.sleep(0.01)
        fourth = socket.create_connection(sock.getsockname())
        fourth.settimeout(TIMEOUT)
        fourth.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        assert await asyncio.to_thread(second.recv, 100) == b""
        assert (await asyncio.to_thread(fourth.recv, 100)).startswith(b"HTTP/1.1 204")
        for client in (first, second, third, fourth):
            client.close()
        server.should_exit = True
        with anyio.fail_after(TIMEOUT):
            await task

    asyncio.run(main())


def test_sse_starlette_app_status():
    from sse_starlette.sse import AppStatus

    assert "should_exit" in vars(AppStatus)
    before = AppStatus.should_exit
    try:
        mcprun.keep_sse_streams_at_sigterm()
        mcprun.end_sse_streams()
        assert AppStatus.should_exit is True
    finally:
        AppStatus.should_exit = before


def test_pydantic_model_rebuilt_in_a_namespace():
    from pydantic import BaseModel

    class Model(BaseModel):
        value: "Later"  # noqa: F821

    mcprun.rebuild_model(Model, {"Later": int})
    assert Model(value="3").value == 3


def servers():
    import fastmcp
    from mcp.server.lowlevel import Server
    from mcp.server.mcpserver import MCPServer

    return {"fastmcp": fastmcp.FastMCP("t"), "sdk": MCPServer("t"), "lowlevel": Server("t")}


@pytest.mark.parametrize("kind", ["fastmcp", "sdk"])
def test_lowlevel_server_inside(kind):
    from mcp.server.lowlevel import Server

    server = servers()[kind]
    assert mcprun.server_kind(server) == kind
    assert isinstance(mcprun.lowlevel_server_of(server, kind), Server)


def inner_body_limits(app):
    """The SDK's body limits left inside an app: its session manager's asgi_app, the SSE transport's post app."""
    from mcp.server.transport_security import RequestBodyLimitMiddleware

    left = []
    for route in app.routes:
        for part in (getattr(route, "app", None), getattr(route, "endpoint", None)):
            owner = getattr(part, "__self__", part)
            for holder in (getattr(owner, "session_manager", None), owner):
                left += [name for name in ("asgi_app", "_post_message_app")
                         if isinstance(getattr(holder, name, None), RequestBodyLimitMiddleware)]
    return left


@pytest.mark.parametrize("transport", ["http", "sse"])
@pytest.mark.parametrize("kind", ["fastmcp", "sdk", "lowlevel"])
def test_inner_limits_found_in_every_app(kind, transport):
    server = servers()[kind]
    settings = mcprun.Settings(spec="t", transport=transport)
    app = mcprun.build_http_app(server, settings)

    async def main():
        messages = [{"type": "lifespan.startup"}]
        started, stop = anyio.Event(), anyio.Event()

        async def receive():
            if messages:
                return messages.pop()
            await stop.wait()
            return {"type": "lifespan.shutdown"}

        async def send(message):
            if message["type"] == "lifespan.startup.complete":
                started.set()

        async with anyio.create_task_group() as group:
            group.start_soon(app, {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
            with anyio.fail_after(TIMEOUT):
                await started.wait()
            found = mcprun.set_inner_limits(app, 67)
            left = inner_body_limits(app)
            stop.set()
        return found, left

    found, left = anyio.run(main)
    assert found >= 1 and not left, (kind, transport, found, left)


def test_pip_shim_patches_this_pip(tmp_path):
    bundle = {"versions": {"mcp": "2.3.0"}, "extras": {}, "mapped": ["mcp"]}
    result = subprocess.run([sys.executable, "-c", mcprun.PIP_WITH_MAPPINGS, "--version"], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "MCPRUN_BUNDLE": json.dumps(bundle)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pip "), result.stdout


@pytest.mark.parametrize("kind", ["fastmcp", "sdk"])
def test_server_middleware_sees_every_request(kind):
    from fastmcp import Client

    server, seen = servers()[kind], []

    async def middleware(ctx, call_next):
        seen.append(ctx.method)
        return await call_next(ctx)

    mcprun.add_server_middleware(mcprun.lowlevel_server_of(server, kind), middleware)

    async def main():
        async with Client(server) as client:
            await client.list_tools()

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    assert "tools/list" in seen, seen


CLAW_CHECK = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
import mcprun
if sys.argv[2] == "unclawed":
    mcprun.import_key_value_unclawed()
import beartype.claw, key_value.aio.stores.memory.store as store
from key_value.aio._utils.sanitize import hash_excess_length
try:
    hash_excess_length(3, 16)
    enforced = False
except TypeError:
    enforced = True
print(json.dumps({"loader": type(store.__spec__.loader).__module__, "enforced": enforced,
                  "claw_restored": beartype.claw.beartype_this_package.__module__.startswith("beartype")}))
"""


@pytest.mark.parametrize("how", ["unclawed", "as upstream imports it"])
def test_key_value_imported_without_its_claw(how):
    """py-key-value still calls beartype.claw at import: mcprun skips that call (its checks are off, so it would
    decorate nothing) and the modules load from their bytecode; the explicit @bear_enforce checks still raise."""
    env = dict(os.environ, PY_KEY_VALUE_DISABLE_BEARTYPE="true")
    done = subprocess.run([sys.executable, "-c", CLAW_CHECK, str(ROOT), how], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["enforced"] and seen["claw_restored"]
    if how == "unclawed":
        assert seen["loader"] == "_frozen_importlib_external", seen  # SourceFileLoader, from the .pyc
    else:  # the claw is still there to skip: its own loader rewrites the modules
        assert seen["loader"].startswith("beartype"), seen


WIRE_CHECK = """
import json, sys
sys.path.insert(0, sys.argv[1])
import mcprun
mcprun.build_wire_models_when_used()
import fastmcp, mcp.server.mcpserver, pydantic
import mcp_types._v2025_11_25 as v2025, mcp_types._v2026_07_28 as v2026
from mcp_types import methods
models = [model for era in (v2025, v2026) for model in vars(era).values()
          if isinstance(model, type) and issubclass(model, pydantic.BaseModel) and model.__module__ == era.__name__]
built_at_import = sum(model.__pydantic_complete__ for model in models)
methods.validate_client_request("tools/call", "2025-11-25", {"name": "echo", "arguments": {"text": "x"}})
try:
    methods.validate_client_request("tools/call", "2025-11-25", {"arguments": {}})
    refused = False
except pydantic.ValidationError:
    refused = True
print(json.dumps({"models": len(models), "built_at_import": built_at_import, "refused": refused,
                  "built_when_used": v2025.CallToolRequest.__pydantic_complete__}))
"""


def test_wire_models_are_built_when_first_used():
    """The SDK's per-era wire models, deferred before the stack is imported, are built by the first message
    that needs one, and check it as before (a tools/call without its name is refused)."""
    done = subprocess.run([sys.executable, "-c", WIRE_CHECK, str(ROOT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["models"] > 250 and seen["built_at_import"] == 0, seen
    assert seen["built_when_used"] and seen["refused"], seen


def test_event_stream_answer_waits_for_its_first_message():
    """The SDK's event-stream branch hands EventSourceResponse a partial of _run_sse_writer over (request id,
    event writer, message stream, priming event): what answer_json_unless_streamed reads, in a subclass of
    sse-starlette's response installed in the SDK's module (test_production checks what the wire then gets)."""
    import inspect

    import mcp.server.streamable_http as streamable
    from sse_starlette import EventSourceResponse

    writer = inspect.signature(streamable.StreamableHTTPServerTransport._run_sse_writer)
    assert list(writer.parameters) == ["self", "request_id", "sse_stream_writer", "request_stream_reader",
                                       "priming_event"]
    assert "partial(\n                        self._run_sse_writer" in inspect.getsource(
        streamable.StreamableHTTPServerTransport._handle_post_request)
    # The subclass sets itself up as sse-starlette's response only when it streams: the SDK makes each one
    # with keywords and then only calls it.
    source = inspect.getsource(streamable)
    assert source.count("response = EventSourceResponse(\n") == 3 and not re.search(r"\bresponse\.\w", source)
    before = streamable.EventSourceResponse
    try:
        mcprun.answer_json_unless_streamed(1.0)
        mcprun.answer_json_unless_streamed(1.0)  # once only
        assert streamable.EventSourceResponse.__mro__[1] is EventSourceResponse
    finally:
        streamable.EventSourceResponse = before
