"""Run any Python MCP server from one file, with no install step.

mcprun is a standalone re-implementation of ``fastmcp run``: it serves a
FastMCP server, an official-SDK server, a fastmcp.json or mcp.json config, or
a proxy to a remote server over stdio, streamable HTTP or SSE, using the
fastmcp stack it carries with it.

Usage::

    mcprun SPEC [options] [-- server args]
    mcprun server.py --transport http --port 9000
    mcprun fastmcp.json
    mcprun https://example.org/mcp

Licensed under the Apache License, Version 2.0.
"""
from __future__ import annotations
import argparse
import contextlib
import contextvars
import dataclasses
import errno
import functools
import gc
import hashlib
import hmac
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import json
import logging
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import warnings
from pathlib import Path
from typing import Any
__version__ = "0.1.0"


# -- constants ---------------------------------------------------------------

EXIT_OK = 0
EXIT_FAILURE = 1  # the server or its code failed at run time
EXIT_USAGE = 2  # bad command line, spec or config file
TRANSPORTS = ("stdio", "http", "streamable-http", "sse")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
SERVER_NAMES = ("mcp", "server", "app")  # tried in this order, as fastmcp run does
CONFIG_FILE_NAME = "fastmcp.json"
COMMANDS = ("run", "check", "vendor", "pack")
DEFAULT_TRANSPORT = "stdio"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_HTTP_PATH = "/mcp"
DEFAULT_SSE_PATH = "/sse"
DEFAULT_LOG_LEVEL = "INFO"
DEFAULT_LOG_FORMAT = "text"
DEFAULT_HEALTH_PATH = "/healthz"
DEFAULT_READY_PATH = "/readyz"
DEFAULT_GRACEFUL_TIMEOUT = 10.0  # seconds in-flight requests get to finish after SIGTERM, or stdio's end of input
DRAIN_LINGER = 0.5  # seconds a drain keeps idle connections open after a call ends, for the client's follow-up
FIRST_REQUEST_WAIT = 2.0  # seconds a drain waits for the first request of a connection taken just before it
STREAM_AFTER = 2.0  # seconds a streamable HTTP answer may wait to be plain JSON before it becomes an event stream
DEFAULT_MAX_BODY = 16 * 1024 * 1024  # bytes in one HTTP request body
DEFAULT_MAX_CONNECTIONS = 1000  # HTTP connections open at once, per process
DEFAULT_READ_TIMEOUT = 30.0  # seconds a client has to send a request's headers; the longest pause in its body
DEFAULT_MAX_SESSIONS = 1000  # streamable HTTP sessions (SSE: event streams) open at once, per process
SESSION_SHARE = 4  # one client address may hold at most 1/SESSION_SHARE of them (--help says: a quarter)
DEFAULT_SESSION_IDLE_TIMEOUT = 1800.0  # seconds a session may go without a request before it is closed (the SDK's)
DESCRIPTOR_RESERVE = 128  # file descriptors kept free of connections, for the server's own files
NOW_AND_THEN = 60.0  # seconds between two log lines about the same recurring trouble
SHUTDOWN_ERROR = {"code": -32000, "message": "server shutting down (mcprun); retry on another server"}
FOLLOW_UPS = ("ping", "tools/list", "prompts/list", "resources/list", "resources/templates/list")  # served in a drain
URL_CONNECT_TIMEOUT = 10.0  # seconds to reach a remote server before giving up
CHECK_TIMEOUT = 60.0  # seconds 'mcprun check' gives a server to start and list what it offers
JWT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519")
AUTH_FAILURES = (10.0, 20)  # failed authentications per second a client address may make, and its burst; then 429
SHORT_TOKEN = 16  # characters: a shorter bearer token gets a warning
RATE_KEYS = 10_000  # callers and addresses the rate limiter remembers; the longest idle are forgotten first
JWT_LEEWAY = 60  # seconds of clock difference allowed on a JWT's exp and nbf
JWKS_REFETCH = 30.0  # seconds, at least, between fetches of a JWKS URL for a key it did not have
RELOAD_STOP_TIMEOUT = 5.0  # seconds a reloaded server gets to stop before SIGKILL
RELOAD_EXTENSIONS = (".json", ".toml", ".yaml", ".yml", ".txt", ".md", ".html", ".env")
DEFAULT_WORKERS = 1
WORKER_BACKOFF = 0.5  # seconds before restarting a worker that died starting; doubled each time in a row
WORKER_MAX_BACKOFF = 30.0
WORKER_KILL_GRACE = 10.0  # seconds past --graceful-timeout before workers still running get SIGKILL
SUPERVISOR_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
DEFAULT_METRICS_PATH = "/metrics"
TOOL_LABELS = 200  # distinct tool names a process counts by name in its metrics; the rest count as _other
UPSTREAM_PROBE_TIMEOUT = 2.0  # seconds the readiness route gives a proxy's upstream to answer
UPSTREAM_WATCH_INTERVAL = 5.0  # seconds between two probes of --exit-on-upstream-failure
UPSTREAM_FAILURES = 3  # probes in a row an upstream may fail before --exit-on-upstream-failure stops
PARENT_POLL_INTERVAL = 1.0  # seconds between a worker's checks that its supervisor still runs
SD_LISTEN_FDS_START = 3  # the first socket systemd passes (sd_listen_fds(3))
CGROUP_ROOT = "/sys/fs/cgroup"

# Environment set before the bundled stack is imported: no update check, no telemetry.
OFFLINE_ENVIRONMENT = {"FASTMCP_CHECK_FOR_UPDATES": "off"}
OFFLINE_DEFAULTS = {"FASTMCP_TELEMETRY_MODE": "off", "FASTMCP_ENABLE_RICH_LOGGING": "false",
                    # py-key-value (fastmcp's state store) checks its own types at run time with beartype, and
                    # only warns: ~170 ms of rewriting its modules at each start (import_state_store). =false
                    # turns it back on.
                    "PY_KEY_VALUE_DISABLE_BEARTYPE": "true"}
BUNDLED_PACKAGES = ("fastmcp", "mcp", "mcp_types", "pydantic", "starlette", "uvicorn", "anyio", "httpx")
BUNDLE_ROOTS = ("fastmcp", "httpx", "prometheus-client")  # what mcprun carries (packaging/requirements.in), with all they need
DEFAULT_MANYLINUX = "manylinux_2_28"  # RHEL 8's glibc, and every manylinux tag below it (2_17 = manylinux2014 ...)
DEFAULT_RESOLVE_TIMEOUT = 300.0  # seconds pip gets for each resolution of what vendor installs
MAX_SOURCE_BUILDS = 10  # releases with no wheel (source only) that vendor builds into pure-Python wheels


# -- errors and log lines: one line on stderr for each -----------------------


class Error(Exception):
    """A trouble mcprun reports as one line, then exits with exit_code; raised where it is found."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:  # passed on from the server's own sys.exit()
            self.exit_code = exit_code


class UsageError(Error):
    """What the user gave is wrong (the command line, the spec, a config file, an MCPRUN_* variable).

    Raised where it is found; main() prints it as one 'mcprun: error:' line and exits EXIT_USAGE.
    """

    exit_code = EXIT_USAGE


class Failure(Error):
    """The run failed: the server's code, the port, the network, pip. Printed as one line, exit EXIT_FAILURE;
    with a cause (an exception in the user's code), the traceback is shown at --log-level DEBUG."""

    exit_code = EXIT_FAILURE


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _short_path(path: str | os.PathLike) -> str:
    """Return path relative to the current folder when it lies below it."""
    try:
        return os.path.relpath(path) if not os.path.relpath(path).startswith("..") else str(path)
    except ValueError:
        return str(path)


def _describe(exc: BaseException) -> str:
    """Return 'Type: message (file:line)' for an exception raised in user code."""
    # A SyntaxError names its own file and line; importlib's frozen frames tell the user nothing.
    frames = [] if isinstance(exc, SyntaxError) else [
        frame for frame in traceback.extract_tb(exc.__traceback__) if not frame.filename.startswith("<")]
    where = f" ({_short_path(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    text = str(exc)
    return f"{type(exc).__name__}: {text}{where}" if text else f"{type(exc).__name__}{where}"


def warn(message: str) -> None:
    """Log one warning line on stderr: 'mcprun: warning: ...'."""
    logging.getLogger("mcprun").warning(message)


def info(message: str) -> None:
    """Log one line on stderr, shown at every log level (stdout may carry the protocol)."""
    logging.getLogger("mcprun").info(message)


def error(message: str) -> None:
    """Log the one 'mcprun: error: ...' line of a failed run."""
    logging.getLogger("mcprun").error(message)
_last_said: dict[str, float] = {}


def warn_now_and_then(trouble: str, message: str) -> None:
    """Warn about a recurring trouble at most once every NOW_AND_THEN seconds, so it cannot fill the disk."""
    now = time.monotonic()
    if now >= _last_said.get(trouble, float("-inf")) + NOW_AND_THEN:
        _last_said[trouble] = now
        warn(message)


def _unwrap(exc: BaseException) -> BaseException:
    """Return the single exception inside nested exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def describe_failure(raised: BaseException, debug: bool) -> tuple[int, str]:
    """Return the exit code and the one error line for a failed run; print the traceback at DEBUG."""
    exc = _unwrap(raised)
    if isinstance(exc, Error):
        if debug and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__)
        user_code = isinstance(exc, Failure) and exc.__cause__ is not None  # a traceback to offer
        hint = "; rerun with --log-level DEBUG for the traceback" if user_code and not debug else ""
        return exc.exit_code, f"{exc}{hint}"
    if debug:  # a failure in the server while it runs
        traceback.print_exception(raised)
    hint = "" if debug else "; rerun with --log-level DEBUG for the traceback"
    return EXIT_FAILURE, f"the server failed: {_describe(exc)}{hint}"
LOGGED_FIELD = 200  # characters of a path, method or tool name an access line shows
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")  # what could end a log line or restyle it


def _one_line(text: str) -> str:
    """Return text with the characters that could break a log line escaped (\\n, \\x1b, ...)."""
    return _CONTROL.sub(lambda found: repr(found[0])[1:-1], text)


def _loggable(text: str) -> str:
    """Return a field a client sent, fit for a log line: escaped, at most LOGGED_FIELD characters."""
    text = _one_line(text)
    return text if len(text) <= LOGGED_FIELD else text[:LOGGED_FIELD] + "…"


class LogFormatter(logging.Formatter):
    """One line per record: 'mcprun: ...' for mcprun's own lines, 'HH:MM:SS LEVEL logger: ...' for the
    rest; or, for --log-format json, one JSON object per line. Never colour. A record's traceback (a
    library's logger.exception()) is printed only at DEBUG; else its exception's first line ends the line."""

    def __init__(self, log_format: str, tracebacks: bool = False) -> None:
        super().__init__()
        self.json = log_format == "json"
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name == "uvicorn.error":  # uvicorn logs everything but access lines there
            record.name = "uvicorn"
        raised = record.exc_info[1] if record.exc_info else None
        if raised is not None and not self.tracebacks:
            message += f" ({type(raised).__name__}: {_first_line(raised)})"
        traceback_text = self.formatException(record.exc_info) if raised is not None and self.tracebacks else ""
        if self.json:
            entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
                     "level": record.levelname, "logger": record.name, "message": message,
                     **getattr(record, "fields", {})}
            if traceback_text:
                entry["exception"] = traceback_text
            return json.dumps(entry, default=str)
        if record.name == "mcprun":
            prefix = {"WARNING": "warning: ", "ERROR": "error: ", "CRITICAL": "error: "}.get(record.levelname, "")
            line = f"mcprun: {prefix}{_one_line(message)}"
        else:
            line = f"{self.formatTime(record, '%H:%M:%S')} {record.levelname} {record.name}: {_one_line(message)}"
        return line + ("\n" + traceback_text if traceback_text else "")


def configure_logging(level: str, log_format: str = DEFAULT_LOG_FORMAT) -> None:
    """Send every log record, fastmcp's and uvicorn's too, to stderr in one format at one level."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter(log_format, tracebacks=level == "DEBUG"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    own = logging.getLogger("mcprun")  # its own handler: a server that sets up logging again can't restyle it
    own.handlers[:] = [handler]
    own.propagate = False
    fastmcp_logger = logging.getLogger("fastmcp")
    fastmcp_logger.handlers.clear()  # fastmcp installs its own at import
    fastmcp_logger.propagate = True
    fastmcp_logger.setLevel(level)
    logging.getLogger("mcprun").setLevel(min(logging.INFO, logging.getLevelName(level)))  # ready lines always
    logging.getLogger("mcprun.access").setLevel(level)


# -- seams: the private parts of other projects that mcprun uses -------------
#
# Each function here is the one place mcprun reaches into an upstream name that is not public API
# (or replaces one). Nothing else in this file does. tests/test_seams.py checks each against the
# bundled versions, so an upgrade that moves one fails there, by name, instead of silently doing nothing.


def pyinstaller_frozen() -> bool:
    """Tell whether this is PyInstaller's binary (its bootloader sets sys.frozen)."""
    return bool(getattr(sys, "frozen", False))


def undo_pyinstaller_environment() -> None:
    """Restore the environment PyInstaller's bootloader changed for itself: LD_LIBRARY_PATH (the user's is
    kept as LD_LIBRARY_PATH_ORIG) and its _PYI_* variables."""
    original = os.environ.pop("LD_LIBRARY_PATH_ORIG", None)
    if original is None:
        os.environ.pop("LD_LIBRARY_PATH", None)
    else:
        os.environ["LD_LIBRARY_PATH"] = original
    for name in [name for name in os.environ if name.startswith("_PYI_")]:
        del os.environ[name]


def shiv_archive_path() -> str | None:
    """Return the zipapp's path when shiv's bootstrap (its _bootstrap module) started this process, else None."""
    if "_bootstrap" in sys.modules and os.path.isfile(sys.argv[0]):  # shiv runs with the .pyz as argv[0]
        return os.path.abspath(sys.argv[0])
    return None


def shiv_archive(path: Path) -> Any:
    """Return the zipapp's ZipFile: the one packaging/pyz_main.py opened (left on shiv's _bootstrap module,
    to spare reading its index again), else the file opened anew."""
    import zipfile

    return getattr(sys.modules.get("_bootstrap"), "mcprun_archive", None) or zipfile.ZipFile(path)


def add_server_middleware(lowlevel: Any, middleware: Any) -> None:
    """Wrap every request a low-level Server answers in middleware(ctx, call_next), outermost: the SDK's
    Server.middleware (provisional in mcp 2.x), which sees initialize and unknown methods too."""
    lowlevel.middleware.insert(0, middleware)


def import_key_value_unclawed() -> None:
    """Import py-key-value (fastmcp's state store) skipping its beartype.claw call when its checks are off:
    with strategy O0 the claw decorates nothing, yet rewrites and compiles every module's source on each
    start (~170 ms). Its explicit @bear_enforce checks stay."""
    import beartype.claw

    claw = beartype.claw.beartype_this_package
    beartype.claw.beartype_this_package = lambda *args, **kwargs: None
    try:
        import key_value.aio  # noqa: F401
    finally:
        beartype.claw.beartype_this_package = claw


def build_wire_models_when_used() -> None:
    """Have pydantic build the SDK's wire models (mcp_types._v*: ~300 models, the exact shape of each message in
    each protocol era, that check every request's shape) at their first use instead of at import (its
    defer_build, read from the base as each class is made): a session speaks one era and a few methods, and the
    rest cost each start ~100 ms. They accept and refuse what they did. Before the bundled stack is imported."""
    try:
        from mcp_types._wire_base import WireModel
    except ImportError:  # an SDK without the eras' wire models
        return
    WireModel.model_config["defer_build"] = True


def rebuild_model(model: Any, namespace: dict) -> None:
    """Resolve a pydantic model's postponed annotations in namespace (pydantic's _types_namespace)."""
    model.model_rebuild(_types_namespace=namespace)


def lowlevel_server_of(server: Any, kind: str) -> Any:
    """Return the low-level mcp Server inside a server object (fastmcp's _mcp_server, MCPServer's _lowlevel_server)."""
    attribute = {"fastmcp": "_mcp_server", "sdk": "_lowlevel_server"}.get(kind)
    return getattr(server, attribute) if attribute else server


def set_inner_limits(app: Any, max_sessions: int) -> int:
    """Take out the SDK's own body limit (4 MiB inside fastmcp's apps), and give its session manager's cap
    (10,000) --max-sessions; return how many of these it found.

    The gateway's limit, the same RequestBodyLimitMiddleware with --max-body, reads every request first, so
    the inner one would only buffer each body again. The SDK's session manager reads its
    cap per request; fastmcp creates both without a way to pass these. Found through the app's routes once its
    lifespan has started: a route's app or endpoint, its session_manager, and their asgi_app or
    _post_message_app.
    """
    found = 0
    for route in getattr(app, "routes", ()):
        for part in (getattr(route, "app", None), getattr(route, "endpoint", None)):
            owner = getattr(part, "__self__", part)  # SSE: a bound method of SseServerTransport
            manager = getattr(owner, "session_manager", None)
            if hasattr(manager, "max_sessions"):
                manager.max_sessions, found = max_sessions, found + 1
            for holder in (manager, owner):
                for name in ("asgi_app", "_post_message_app"):
                    limiter = getattr(holder, name, None)
                    if hasattr(limiter, "max_body_size"):
                        setattr(holder, name, limiter.app)
                        found += 1
    return found


def accept_one_at_a_time(loop: Any) -> bool:
    """Make asyncio's selector loop accept one connection per wake-up instead of up to the backlog (its
    _accept_connection); return False for a loop without it (uvloop), which keeps its own way."""
    accept = getattr(loop, "_accept_connection", None)
    if accept is None:
        return False

    def accept_one(protocol_factory, listener, sslcontext=None, server=None, backlog=100, *args, **kwargs):
        return accept(protocol_factory, listener, sslcontext, server, 1, *args, **kwargs)

    loop._accept_connection = accept_one
    return True


def uvicorn_listeners(server: Any) -> list:
    """Return the asyncio servers a uvicorn.Server listens with (its servers, set in startup())."""
    return server.servers


def uvicorn_connections(server: Any) -> set:
    """Return the protocols of the connections a uvicorn.Server has open (its server_state.connections)."""
    return server.server_state.connections


def uvicorn_forced(server: Any) -> bool:
    """Tell whether a second SIGINT/SIGTERM asked a uvicorn.Server to stop now (its force_exit)."""
    return server.force_exit


def keep_sse_streams_at_sigterm() -> None:
    """Stop sse-starlette ending every event stream at SIGTERM (its AppStatus): mcprun drains them."""
    from sse_starlette.sse import AppStatus

    AppStatus.disable_automatic_graceful_drain()


def end_sse_streams() -> None:
    """End every sse-starlette event stream still open, once the drain is over."""
    from sse_starlette.sse import AppStatus

    AppStatus.should_exit = True


def answer_json_unless_streamed(wait: float) -> None:
    """Make the SDK's streamable HTTP answer a request with plain JSON when its response is the only message
    the server sends for it and comes within WAIT seconds; else with the event stream it would have sent, from
    the first message on (a progress note, a log line, a request to the client, or a slow call's pings).

    The SDK chooses one or the other for every request of a server (json_response) before it is answered; its
    event-stream branch hands the response it makes a partial of the transport's _run_sse_writer, (request id,
    event writer, the request's message stream, priming event). Its module's EventSourceResponse becomes a
    subclass that reads that stream's first message before it commits to either. Anything else (GET streams,
    replays, an event store's ids) goes as before; sse-starlette's response is set up only for what streams."""
    import anyio
    import mcp.server.streamable_http as streamable
    from mcp_types import JSONRPCError, JSONRPCResponse
    from starlette.responses import Response

    EventStream = streamable.EventSourceResponse
    if getattr(EventStream, "mcprun_lazy", False):
        return

    class Ahead:
        """The request's message stream, with the message already read put back in front."""

        def __init__(self, first, rest):
            self.first, self.rest = first, rest

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            return await self.rest.__aexit__(*exc)

        def __aiter__(self):
            return self

        async def __anext__(self):
            if self.first is None:
                return await self.rest.__anext__()
            first, self.first = self.first, None
            return first

    class JsonUnlessStreamed(EventStream):
        mcprun_lazy = True

        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs  # sse-starlette's own set-up waits for stream()

        async def __call__(self, scope, receive, send):
            sender = self.kwargs.get("data_sender_callable")
            if not (isinstance(sender, functools.partial) and getattr(sender.func, "__name__", "") == "_run_sse_writer"
                    and len(sender.args) == 4 and sender.args[3] is None):
                return await self.stream(scope, receive, send)
            request_id, events, messages, priming = sender.args
            first = None
            with anyio.move_on_after(wait):
                try:
                    first = await messages.receive()
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    pass
            ahead = Ahead(first, messages)
            if first is None or first.event_id is not None or not isinstance(first.message,
                                                                             JSONRPCResponse | JSONRPCError):
                self.kwargs["data_sender_callable"] = functools.partial(sender.func, request_id, events, ahead, priming)
                return await self.stream(scope, receive, send)
            framed, frames = anyio.create_memory_object_stream(1)
            await sender.func(request_id, framed, ahead, priming)  # the SDK's own serialising and clean-up
            with frames:
                body = frames.receive_nowait()["data"]
            session = (self.kwargs.get("headers") or {}).get("mcp-session-id")
            await Response(body, media_type="application/json",
                           headers={"mcp-session-id": session} if session else None)(scope, receive, send)

        async def stream(self, scope, receive, send):
            super().__init__(*self.args, **self.kwargs)
            await super().__call__(scope, receive, send)

    streamable.EventSourceResponse = JsonUnlessStreamed


def closing_response(status: str, message: str) -> bytes:
    """Return a whole HTTP/1.1 response that closes its connection, written on the socket itself."""
    body = json.dumps({"error": message}).encode() + b"\n"
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n").encode() + body
FULL = closing_response("503 Service Unavailable", "too many connections")
TIMED_OUT = closing_response("408 Request Timeout", "request read timeout")
HEADER_LIMIT = 16 * 1024  # bytes of a request's line and headers: h11's own limit, which httptools does not have
HEADERS_TOO_LARGE = closing_response("431 Request Header Fields Too Large",
                                     f"request headers over {HEADER_LIMIT // 1024} KiB")


CLIENT_CERTIFICATE = "mcprun.client_certificate"  # scope["state"] key: the subject of a mutual-TLS client
FIRST_ON_CONNECTION = "mcprun.first_on_connection"  # scope["state"] key: True for a connection's first request


def certificate_name(peer: dict) -> str:
    """Name a client certificate (ssl's getpeercert() form) by its subject's common name, else its whole subject."""
    parts = [(key, value) for rdn in peer.get("subject", ()) for key, value in rdn]
    common = [value for key, value in parts if key == "commonName"]
    return (common[-1] if common else ",".join(f"{key}={value}" for key, value in parts) or "client")[:64]


def http_protocol_base() -> type:
    """Return uvicorn's HTTP/1.1 protocol to build on: httptools' (C; ~10 % less CPU per call here) where
    httptools is installed, as in the artifacts, else h11's (pure Python); with reading(), and a call of
    began() once each request's scope is made."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # its parser, cycle, flow, transport
    except ImportError:
        import h11
        from uvicorn.protocols.http.h11_impl import H11Protocol  # its conn, cycle, flow, transport

        class H11Reading(H11Protocol):
            def handle_events(self):
                super().handle_events()  # a request's scope at most: h11 holds back the next one till the response
                if self.cycle is not None:
                    self.began()

            def reading(self) -> str:
                state = self.conn.their_state
                if state is h11.IDLE:
                    return "headers" if self.conn.trailing_data[0] else "nothing"
                return "body" if state is h11.SEND_BODY else "done"

        return H11Reading

    class HttpToolsReading(HttpToolsProtocol):
        read = "nothing"  # of the request the parser is on: headers (begun), body, done

        def on_message_begin(self):
            super().on_message_begin()
            self.read = "headers"
            self.began()

        def on_headers_complete(self):
            super().on_headers_complete()
            self.read = "body"

        def on_message_complete(self):
            super().on_message_complete()
            self.read = "done"

        def reading(self) -> str:
            done = self.read == "done" and (self.cycle is None or self.cycle.response_complete)
            return "nothing" if done else self.read

    return HttpToolsReading


def guarded_protocol(cap: int, read_timeout: float) -> type:
    """Return uvicorn's HTTP/1.1 protocol with mcprun's limits on connections, for uvicorn's Config(http=).

    At most cap connections are open: past it, a new one closes the connection that has waited
    longest with no request in progress (idle keep-alive, or headers still arriving), or, when every
    one has a request in progress, is answered 503 and closed, its descriptor freed at once.
    A request's headers must arrive within read_timeout seconds (0: no limit) of the connection or of
    the previous response, and its body may not pause for longer; else the connection is closed.
    Headers past HEADER_LIMIT get 431 and a closed connection (h11's parser answers 400 itself).
    reading() says what of the next request has arrived: nothing, headers (some), body, or done
    (all of it: the app has the request).
    """
    class GuardedProtocol(http_protocol_base()):
        refused = False
        waiting_since = float("inf")  # loop time since the connection has waited for a request
        deadline = None
        header_bytes = 0  # received while the request's headers are incomplete

        def connection_made(self, transport):
            if len(self.connections) >= cap and not self.close_longest_waiting():
                self.refused = True
                transport.write(FULL)
                transport.close()
                warn_now_and_then("connections", f"{cap} connections open, every one with a request in "
                                  "progress: new ones get 503; raise --max-connections (and the open files limit)")
                return
            super().connection_made(transport)
            self.app_state = {**self.app_state, FIRST_ON_CONNECTION: True}
            if peer := transport.get_extra_info("peercert"):  # mutual TLS: its requests' scope["state"] names it
                self.app_state = {**self.app_state, CLIENT_CERTIFICATE: certificate_name(peer)}
            self.wait_for_request()

        def connection_lost(self, exc):
            if self.refused:
                return
            if self.deadline:
                self.deadline.cancel()
            super().connection_lost(exc)

        def data_received(self, data):
            super().data_received(data)
            reading = self.reading()
            self.header_bytes = self.header_bytes + len(data) if reading == "headers" else 0
            if self.header_bytes > HEADER_LIMIT and not self.transport.is_closing():
                self.transport.write(HEADERS_TOO_LARGE)  # httptools would hold any length of them
                return self.transport.close()
            if reading == "body":
                self.arm()  # the body moves: so does its deadline

        def on_response_complete(self):
            super().on_response_complete()
            self.wait_for_request()

        def began(self):
            if self.app_state.get(FIRST_ON_CONNECTION):  # the requests after it are not first
                self.app_state = {**self.app_state, FIRST_ON_CONNECTION: False}

        def wait_for_request(self):
            self.waiting_since = self.loop.time()
            self.arm()

        def arm(self):
            if self.deadline:
                self.deadline.cancel()
            if read_timeout:
                self.deadline = self.loop.call_later(read_timeout, self.read_timed_out)

        def read_timed_out(self):
            self.deadline = None
            reading = self.reading()
            if self.transport.is_closing() or reading == "done":
                return
            if self.flow.read_paused:  # the app has not read what came: not the client's delay
                return self.arm()
            if self.cycle and not self.cycle.response_complete:
                if self.cycle.response_started:
                    return self.transport.close()
                self.cycle.disconnected = True  # what the app says now goes nowhere; it reads a disconnect
                self.cycle.message_event.set()
            if reading != "nothing":  # a request had begun
                self.transport.write(TIMED_OUT)
            self.transport.close()

        def waiting(self) -> bool:
            return (self.reading() in ("nothing", "headers") and not self.transport.is_closing()
                    and (self.cycle is None or self.cycle.response_complete))

        def unstarted(self) -> bool:
            """True while the connection has not yet sent (all the headers of) its first request."""
            return self.cycle is None and not self.transport.is_closing()

        def close_longest_waiting(self) -> bool:
            waiting = [c for c in self.connections if isinstance(c, GuardedProtocol) and c.waiting()]
            if not waiting:
                return False
            min(waiting, key=lambda c: c.waiting_since).transport.close()
            return True

    return GuardedProtocol

# pip runs mcprun vendor's resolutions through this shim (python -c), in pip's own process, with the
# bundle's versions as a JSON object in argv[1]: pip's private metadata and requirement classes.
PIP_WITH_MAPPINGS = """\
import json, os, runpy, sys
bundle = json.loads(os.environ.pop("MCPRUN_BUNDLE", "") or "null")
if bundle:  # the bundle counts as installed: drop what it meets wherever pip reads a distribution's requirements
    from pip._internal.metadata import base
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name
    if "iter_dependencies" not in vars(base.BaseDistribution):
        sys.exit("mcprun: this pip reads requirements elsewhere; upgrade it: python3 -m pip install -U pip")
    versions, extras, mapped = bundle["versions"], bundle["extras"], set(bundle["mapped"])
    def missing(requirement):  # mcprun's bundle_verdict, again: this runs inside pip
        name = canonicalize_name(requirement.name)
        if name not in versions or not (name in mapped or requirement.specifier.contains(versions[name], True)):
            yield requirement  # not bundled, or in conflict with the bundle (pip says so against the constraint)
            return
        for extra in requirement.extras:  # what the bundled package's extras add
            for text in extras.get(name, {}).get(canonicalize_name(extra), ()):
                marker = f"; {requirement.marker}" if requirement.marker else ""
                yield from missing(Requirement(text + marker))
    def lifted(iter_dependencies):
        def iter_missing(self, extras=()):
            for requirement in iter_dependencies(self, extras):
                yield from missing(requirement)
        return iter_missing
    def patch(cls):
        if "iter_dependencies" in vars(cls):
            cls.iter_dependencies = lifted(vars(cls)["iter_dependencies"])
    classes = list(base.BaseDistribution.__subclasses__())
    while classes:
        patch(classes[0])
        classes[1:1] = classes.pop(0).__subclasses__()
    base.BaseDistribution.__init_subclass__ = classmethod(lambda cls, **kw: patch(cls))
sys.argv[0] = "pip"
runpy.run_module("pip", run_name="__main__", alter_sys=True)
"""


# -- the running program: source, zipapp or binary ---------------------------
#
# The same code runs three ways. What differs between them (where the program is, how to start it
# again, what the processes it starts inherit) is asked here, and nowhere else.


@dataclasses.dataclass(frozen=True)
class Program:
    """This mcprun as it runs."""

    kind: str  # "source" (mcprun.py), "zipapp" (shiv's mcprun.pyz) or "binary" (PyInstaller's mcprun)
    path: Path  # the file the user ran (the binary's, not its unpacked copy in the cache)
    command: tuple  # what starts it again (--reload)
    cache: Path  # where it keeps what it makes for later starts (uv's folders): the binary's, where it unpacked

    def start(self) -> None:
        """In the binary: make sys.executable the mcprun file the user ran, and start multiprocessing's
        workers through it.

        packaging/launcher.c unpacks the binary once into a cache and runs it from there, naming itself
        in MCPRUN_BINARY; servers that start sys.executable, --reload and pack start that file.
        """
        if self.kind != "binary":
            return
        os.environ.pop("MCPRUN_BINARY", None)
        sys.executable = str(self.path)
        import multiprocessing

        multiprocessing.set_executable(sys.executable)
        multiprocessing.freeze_support()  # a worker a server started with multiprocessing: runs, then exits

    def restore_child_environment(self) -> None:
        """Give what mcprun starts (pip, the server's subprocesses) the environment the binary was started with."""
        if self.kind == "binary":
            undo_pyinstaller_environment()


def default_cache() -> Path:
    """The cache of mcprun.py and the zipapp, in the binary's order: $MCPRUN_CACHE, $XDG_CACHE_HOME/mcprun, ~/.cache/mcprun,
    else $TMPDIR/mcprun-UID (no usable HOME)."""
    if os.environ.get("MCPRUN_CACHE"):
        return Path(os.environ["MCPRUN_CACHE"])
    if os.environ.get("XDG_CACHE_HOME", "").startswith("/"):
        return Path(os.environ["XDG_CACHE_HOME"], "mcprun")
    if os.path.expanduser("~") not in ("~", "/"):
        return Path(os.path.expanduser("~"), ".cache", "mcprun")
    return Path(tempfile.gettempdir(), f"mcprun-{os.getuid()}")


@functools.cache
def this_program() -> Program:
    """Return the running mcprun: the binary, the zipapp or the source file."""
    if pyinstaller_frozen():
        binary = os.environ.get("MCPRUN_BINARY") or sys.executable
        # packaging/launcher.c runs CACHE/mcprun-BUILD/app/mcprun, from the first cache folder that works
        return Program("binary", Path(binary), (binary,), Path(sys.executable).parents[2])
    if pyz := shiv_archive_path():
        return Program("zipapp", Path(pyz), (sys.executable, pyz), default_cache())
    source = os.path.abspath(__file__)
    return Program("source", Path(source), (sys.executable, source), default_cache())


def run_python_code(args: list[str]) -> int:
    """Do what 'python -c CODE ARGS' does: servers start sys.executable so, and in the binary that is mcprun."""
    if not args:
        raise UsageError("-c needs the code to run, as python's -c does")
    sys.argv = ["-c", *args[1:]]
    exec(compile(args[0], "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    return EXIT_OK


# -- settings, 1: the command line -------------------------------------------


def parse_port(text: str) -> int:
    """argparse type: a TCP port number, 0 meaning any free port."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0-65535)")
    return port


def _one_of(text: str, value: str, choices: tuple) -> str:
    """Return value (text, normalised) if it is one of choices; else the argparse error naming them."""
    if value not in choices:
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose one of {', '.join(choices)})")
    return value


def parse_log_level(text: str) -> str:
    """argparse type: a log level name, any case."""
    return _one_of(text, text.upper(), LOG_LEVELS)


def parse_transport(text: str) -> str:
    return _one_of(text, text, TRANSPORTS)


def parse_log_format(text: str) -> str:
    return _one_of(text, text.lower(), LOG_FORMATS)


def parse_seconds(text: str) -> float:
    """argparse type: a duration in seconds, e.g. 10 or 2.5."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (e.g. 10 or 2.5)")
    return seconds


def parse_period(text: str) -> float:
    """argparse type: a duration in seconds that is more than 0, e.g. 600."""
    seconds = parse_seconds(text)
    if not seconds:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0 (e.g. 600)")
    return seconds
_SIZE_UNITS = {"": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": 1024**2,
               "g": 1000**3, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str) -> int:
    """argparse type: a size in bytes, with an optional unit: 16MiB, 500k, 1048576."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match[2].lower() not in _SIZE_UNITS or float(match[1]) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 16MiB, 500kB or 1048576)")
    return int(float(match[1]) * _SIZE_UNITS[match[2].lower()])


def parse_count(text: str, example: str = "a positive whole number (e.g. 1000)") -> int:
    """argparse type: a positive whole number."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not {example}")
    return count


def usable_cores() -> int:
    """Return the cores this process may run on: its CPU affinity, capped by its cgroup v2 cpu.max quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:  # '0::/some/group' on cgroup v2; each level up to the root may set a quota
        with open("/proc/self/cgroup") as f:
            group = next((line[3:].strip() for line in f if line.startswith("0::")), "/")
    except OSError:
        group = "/"
    folder = Path(CGROUP_ROOT + group.rstrip("/"))
    for level in (folder, *folder.parents):
        if not str(level).startswith(CGROUP_ROOT):
            break
        try:
            quota, period = (level / "cpu.max").read_text().split()[:2]
            if quota != "max":
                cores = min(cores, -(-int(quota) // int(period)))  # 150000/100000: 2 cores, partly
        except (OSError, ValueError):
            continue
    return max(1, cores)


def parse_workers(text: str) -> int:
    """argparse type: a number of worker processes, or 'auto' for the usable cores."""
    if text.strip().lower() == "auto":
        return usable_cores()
    return parse_count(text, "a number of workers (1, 2, ... or auto)")


@dataclasses.dataclass(frozen=True)
class Rate:
    """A rate limit: so many a second, in bursts of up to the count given (10/s: 10; 600/m: 600)."""

    per_second: float
    burst: int
    text: str

    def __str__(self) -> str:
        return self.text


def parse_rate(text: str) -> Rate:
    """argparse type: a rate such as 10/s or 600/m."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute)\s*", text.lower())
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate (e.g. 10/s or 600/m)")
    count = float(match[1])
    return Rate(count if match[2].startswith("s") else count / 60, max(1, int(count)), f"{match[1]}/{match[2][0]}")


def parse_route(text: str) -> str:
    """argparse type: an HTTP route such as /healthz."""
    route = text if text.startswith("/") else "/" + text
    if not re.fullmatch(r"/[\w.~/-]*", route):
        raise argparse.ArgumentTypeError(f"{text!r} is not a route (e.g. /healthz)")
    return route


def parse_listen_address(text: str) -> str:
    """argparse type: HOST:PORT to listen on ([::1]:PORT for IPv6; port 0 picks a free one)."""
    host, colon, port = text.rpartition(":")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9100)")
    return text


def split_listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def parse_otlp_endpoint(text: str) -> str:
    """argparse type: an OTLP/HTTP collector's URL, e.g. http://127.0.0.1:4318."""
    parsed = urllib.parse.urlsplit(text.strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s):// URL (e.g. http://127.0.0.1:4318)")
    return text.strip()


def _version_of(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def _options_end(argv: list[str]) -> int:
    return argv.index("--") if "--" in argv else len(argv)
EPILOG = f"""\
examples:
  mcprun server.py                          serve server.py's mcp/server/app over stdio
  mcprun server.py:create_server -t http    call a factory, serve on http://127.0.0.1:8000/mcp
  mcprun my_package.server:mcp -t sse -p 0  import string, SSE on a free port
  mcprun fastmcp.json                       run a fastmcp.json (also found in . with no SPEC)
  mcprun https://example.org/mcp            stdio proxy to a remote server
  mcprun server.py -- --config dev.toml     pass arguments to the server (sys.argv)
  mcprun check server.py --json             preflight: would it serve? its tools, resources, prompts
  mcprun vendor server.py -o deps           (connected machine) fetch what the server needs, for
                                            --pythonpath deps on the offline one
  mcprun vendor mcp-server-git -o deps      (connected machine) a server from PyPI, by name or NAME==X.Y
  mcprun mcp-server-git --pythonpath deps -t http -- --repository /srv/repo
                                            (offline) run its console script, as uvx would, over HTTP
  mcprun pack server.py -o server.pyz       (connected machine) one zipapp: mcprun, the server's
                                            folder and its packages; python3 server.pyz serves it
  MCPRUN_AUTH_TOKEN=$(cat /etc/mcp-token) mcprun server.py -t http --host 0.0.0.0
                                            serve on every interface; clients send the bearer token

how SPEC is found, in this order:
  http(s)://...    a proxy to that remote server
  NAME.json        a fastmcp.json, or an mcp.json (mcpServers: one proxy for them all)
  a file           server.py[:obj] (its mcp, server or app, or that object or factory); a file
                   without .py is run as a script: pip's DIR/bin/NAME runs its console script
  module[:obj]     an import string, when the module is found (current folder, --pythonpath)
  NAME             a console script of a package in a --pythonpath folder (or the only one of
                   the package called NAME), before a folder called NAME here; an unknown name
                   lists the console scripts there
  code that starts its own server (a console script, -m, --script, main() calling mcp.run()) is
  caught where it starts and served on the transport, address and gateway mcprun is given

environment:
  MCPRUN_<OPTION> sets an option (MCPRUN_PORT=9000, MCPRUN_NO_BANNER=1, MCPRUN_AUTH_TOKEN=..., ...);
  precedence: command line > fastmcp.json deployment > MCPRUN_* > defaults.

signals (http/sse):
  SIGTERM, SIGINT  stop accepting, let calls in flight finish (--graceful-timeout), exit 0
  second SIGINT    stop at once
  SIGHUP           read the token file, the JWKS and the TLS certificate again (connections stay open);
                   with --workers: replace the workers one at a time, with the code on disk

systemd: takes a listening socket from socket activation (LISTEN_FDS) and reports READY=1 and
  STOPPING=1 to NOTIFY_SOCKET (Type=notify).

exit codes:
  {EXIT_OK}  the server stopped cleanly
  {EXIT_FAILURE}  the run failed: the server's code (an import error, ...), a requirement, the port, pip
  {EXIT_USAGE}  what was given is wrong: the command line, the spec, a config file, an MCPRUN_* variable
"""


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser; it only describes, so tests and man pages can use it."""
    parser = argparse.ArgumentParser(
        prog="mcprun",
        usage="mcprun [run|check|vendor|pack] [SPEC] [options] [-- server args]",
        description="Run a Python MCP server (FastMCP, official SDK, fastmcp.json, mcp.json) "
                    "or proxy a remote one, with no install step.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "spec", nargs="?", metavar="SPEC",
        help="server.py[:obj], pkg.module:obj, a console script, fastmcp.json, mcp.json or an http(s):// URL "
             f"(default: ./{CONFIG_FILE_NAME}); see 'how SPEC is found' below",
    )
    parser.add_argument("server_args", nargs="*", metavar="ARG", help="arguments for the server (also after --)")
    parser.add_argument("-m", "--module", action="store_true",
                        help="SPEC is a module to run as 'python -m SPEC' would, in this process; the server it "
                             "starts is caught and served")
    parser.add_argument("--script", action="store_true",
                        help="SPEC is a .py file that starts its own server: run it as __main__ with the bundle; "
                             "the server it starts is caught and served")
    parser.add_argument("--version", action="store_true",
                        help="print mcprun, fastmcp, mcp and Python versions and exit")
    parser.add_argument("--json", action="store_true",
                        help="with 'mcprun check': print the report as JSON")
    vendoring = parser.add_argument_group(
        "mcprun vendor PACKAGE...|requirements.txt|SPEC -o DIR, mcprun pack SPEC|PACKAGE -o FILE (on a connected "
        "machine)")
    vendoring.add_argument("-o", "--output", metavar="PATH",
                           help="vendor: the folder to install into, for --pythonpath; pack: the zipapp to write")
    vendoring.add_argument("--python-version", metavar="X.Y",
                           help="Python of the machine that will run it (default: this mcprun's)")
    vendoring.add_argument("--platform", metavar="TAG",
                           help=f"wheel platform of that machine; older manylinux tags count too (default: "
                                f"{DEFAULT_MANYLINUX}_ARCH, this machine's ARCH)")
    vendoring.add_argument("--resolve-timeout", type=parse_seconds, metavar="SECONDS",
                           help=f"give up when pip takes longer to resolve (default: {DEFAULT_RESOLVE_TIMEOUT:g})")

    serving = parser.add_argument_group("serving")
    serving.add_argument("-t", "--transport", choices=TRANSPORTS, metavar="{stdio,http,streamable-http,sse}",
                         help=f"protocol to serve (default: {DEFAULT_TRANSPORT})")
    serving.add_argument("--host", metavar="HOST", help=f"address to bind for http/sse (default: {DEFAULT_HOST})")
    serving.add_argument("-p", "--port", type=parse_port, metavar="PORT",
                         help=f"port for http/sse, 0 for a free one (default: {DEFAULT_PORT})")
    serving.add_argument("--path", metavar="PATH",
                         help=f"route of the endpoint (default: {DEFAULT_HTTP_PATH} for http, {DEFAULT_SSE_PATH} for sse)")
    serving.add_argument("--stateless", action="store_true", default=None,
                         help="serve streamable HTTP without sessions (each request stands alone)")
    serving.add_argument("--json-response", action="store_true", default=None,
                         help="always answer streamable HTTP requests with plain JSON: nothing the server sends "
                              "during a call (progress, logs, requests to the client) reaches the client (without "
                              f"it, JSON unless the server sends something first or takes over {STREAM_AFTER:g} s)")
    serving.add_argument("-w", "--workers", type=parse_workers, metavar="N",
                         help="processes serving http on one port, or 'auto' for one per usable core; "
                              f"more than 1 needs --stateless (default: {DEFAULT_WORKERS})")

    security = parser.add_argument_group("http security")
    security.add_argument("--auth-token", metavar="TOKEN",
                          help="require 'Authorization: Bearer TOKEN' (visible in ps: prefer the file or "
                               "MCPRUN_AUTH_TOKEN)")
    security.add_argument("--auth-token-file", metavar="FILE",
                          help="read the bearer tokens from FILE, one per line: TOKEN or NAME TOKEN (the name is "
                               "the caller in the access log; # comments allowed; SIGHUP reads it again)")
    security.add_argument("--auth-jwks", metavar="FILE|URL",
                          help="also accept OAuth access tokens (JWTs) signed by a key of this JWKS: a file "
                               "(SIGHUP reads it again) or the authorization server's jwks_uri")
    security.add_argument("--auth-issuer", metavar="URL", help="the issuer (iss) the JWTs must name; needs --auth-jwks")
    security.add_argument("--auth-resource", metavar="URL",
                          help="this server's canonical URL: the audience its JWTs must carry, and the resource "
                               "in /.well-known/oauth-protected-resource; needs --auth-jwks")
    security.add_argument("--auth-audience", dest="auth_audiences", action="append", metavar="AUD",
                          help="also accept JWTs for this audience (aud), repeatable")
    security.add_argument("--auth-scope", dest="auth_scopes", action="append", metavar="SCOPE",
                          help="a scope every JWT must carry (else 403 insufficient_scope), repeatable")
    security.add_argument("--rate-limit", type=parse_rate, metavar="N/s|N/m",
                          help="requests each caller (token name or JWT subject; without auth, each client address) "
                               "may make, in bursts of up to N; past it, 429 with Retry-After")
    security.add_argument("--require-auth", action="store_true", default=None,
                          help="refuse to serve http/sse without a token (default: warn when bound beyond loopback)")
    security.add_argument("--allowed-host", dest="allowed_hosts", action="append", metavar="HOST",
                          help="also accept this Host header, e.g. mcp.example.org or *.example.org; "
                               "repeatable (default: loopback names when bound to loopback)")
    security.add_argument("--allowed-origin", dest="allowed_origins", action="append", metavar="ORIGIN",
                          help="also accept requests from this browser Origin, e.g. https://app.example.org; "
                               "repeatable")
    security.add_argument("--cors-origin", dest="cors_origins", action="append", metavar="ORIGIN",
                          help="let browser pages from ORIGIN read responses (CORS, preflight answered); "
                               "repeatable, implies --allowed-origin")
    security.add_argument("--tls-cert", metavar="FILE",
                          help="serve https with this PEM certificate (chain); needs --tls-key; SIGHUP reloads it")
    security.add_argument("--tls-key", metavar="FILE", help="the certificate's PEM private key")
    security.add_argument("--tls-key-password-file", metavar="FILE",
                          help="the password of an encrypted --tls-key, on the file's first line")
    security.add_argument("--tls-client-ca", metavar="FILE",
                          help="mutual TLS: accept only clients with a certificate from these PEM CAs")

    policy = parser.add_argument_group("policy (every transport: what is left out is absent from its list, and "
                                       "asking for it gets the server's answer to a name it does not have)")
    policy.add_argument("--tools", dest="tools", action="append", metavar="PATTERN",
                        help="offer only the tools whose names match this glob (e.g. 'git_*'), repeatable")
    policy.add_argument("--exclude-tools", dest="exclude_tools", action="append", metavar="PATTERN",
                        help="leave out the tools whose names match this glob, repeatable")
    policy.add_argument("--read-only", action="store_true", default=None,
                        help="offer only the tools the server annotates readOnlyHint: true")
    policy.add_argument("--policy", metavar="FILE",
                        help="the tools each caller is offered: 'WHO GLOB...' lines, WHO a token name, JWT subject "
                             "or client certificate, scope:SCOPE or *; !GLOB leaves out; SIGHUP reads it again")
    policy.add_argument("--resources", dest="resources", action="append", metavar="PATTERN",
                        help="offer only the resources and resource templates whose URI matches this glob "
                             "(e.g. 'docs://*'), repeatable")
    policy.add_argument("--exclude-resources", dest="exclude_resources", action="append", metavar="PATTERN",
                        help="leave out the resources and templates whose URI matches this glob, repeatable")
    policy.add_argument("--prompts", dest="prompts", action="append", metavar="PATTERN",
                        help="offer only the prompts whose names match this glob, repeatable")
    policy.add_argument("--exclude-prompts", dest="exclude_prompts", action="append", metavar="PATTERN",
                        help="leave out the prompts whose names match this glob, repeatable")

    audit = parser.add_argument_group("audit (every transport)")
    audit.add_argument("--audit-log", metavar="PATH",
                       help="append one JSON line per tool call, resource read and prompt get: who, what, the "
                            "arguments' SHA-256, the outcome, how long; - for stderr; SIGHUP reopens it")
    audit.add_argument("--audit-arguments", action="store_true", default=None,
                       help="put the arguments themselves in the audit log too")
    audit.add_argument("--audit-lists", action="store_true", default=None,
                       help="log the list operations (tools/list, ...) in the audit log too")

    metrics = parser.add_argument_group("metrics (Prometheus text format)")
    metrics.add_argument("--metrics", action="store_true", default=None,
                         help=f"serve metrics on the http port at {DEFAULT_METRICS_PATH}, behind the auth token")
    metrics.add_argument("--metrics-path", type=parse_route, metavar="PATH",
                         help=f"serve them at this route instead; implies --metrics (default: {DEFAULT_METRICS_PATH})")
    metrics.add_argument("--metrics-listen", type=parse_listen_address, metavar="HOST:PORT",
                         help="serve them on a listener of their own, without auth, on every transport "
                              "(e.g. 127.0.0.1:9100; port 0 for a free one)")
    traces = parser.add_argument_group("traces (every transport)")
    traces.add_argument("--otlp-endpoint", type=parse_otlp_endpoint, metavar="URL",
                        help="export OpenTelemetry spans (the server's, and one per HTTP request from the gateway) "
                             "over OTLP/HTTP to this collector, e.g. http://127.0.0.1:4318 (/v1/traces added to a "
                             "URL without a path); the OTEL_EXPORTER_OTLP_* variables work too; needs the "
                             "OpenTelemetry SDK in a --pythonpath folder (see docs/observing.md)")

    operations = parser.add_argument_group("http operations")
    operations.add_argument("--health-path", type=parse_route, metavar="PATH",
                            help=f"liveness route, no auth (default: {DEFAULT_HEALTH_PATH})")
    operations.add_argument("--ready-path", type=parse_route, metavar="PATH",
                            help=f"readiness route, 200 while serving, 503 while draining (default: {DEFAULT_READY_PATH})")
    operations.add_argument("--graceful-timeout", type=parse_seconds, metavar="SECONDS",
                            help="seconds calls in flight get to finish on SIGTERM/SIGINT (http, sse) or at "
                                 f"the end of stdin (stdio) (default: {DEFAULT_GRACEFUL_TIMEOUT:g})")
    operations.add_argument("--max-body", type=parse_size, metavar="SIZE",
                            help="largest request body, e.g. 16MiB or 500kB (default: 16MiB)")
    operations.add_argument("--max-connections", type=parse_count, metavar="N",
                            help="connections open at once, per process; past it the one waiting longest "
                                 f"for a request is closed (default: {DEFAULT_MAX_CONNECTIONS}, within the "
                                 "open files limit)")
    operations.add_argument("--read-timeout", type=parse_seconds, metavar="SECONDS",
                            help="seconds a client has to send a request's headers, and the longest pause "
                                 f"in its body; 0 for none (default: {DEFAULT_READ_TIMEOUT:g})")
    operations.add_argument("--max-sessions", type=parse_count, metavar="N",
                            help="sessions (sse: event streams) open at once, per process; one client address "
                                 f"may hold a quarter of them (default: {DEFAULT_MAX_SESSIONS})")
    operations.add_argument("--session-idle-timeout", type=parse_period, metavar="SECONDS",
                            help="close a session after this long without a request "
                                 f"(default: {DEFAULT_SESSION_IDLE_TIMEOUT:g})")
    operations.add_argument("--no-access-log", dest="access_log", action="store_false", default=None,
                            help="don't log one line per http request")
    operations.add_argument("--exit-on-upstream-failure", action="store_true", default=None,
                            help=f"a proxy (URL or mcp.json spec): exit with code {EXIT_FAILURE} once an upstream "
                                 f"has not answered for {UPSTREAM_WATCH_INTERVAL * UPSTREAM_FAILURES:g} s, so "
                                 "that a supervisor restarts it (any transport)")

    behaviour = parser.add_argument_group("behaviour")
    behaviour.add_argument("-l", "--log-level", type=parse_log_level, metavar="LEVEL",
                           help=f"{', '.join(LOG_LEVELS)}; DEBUG also shows tracebacks (default: {DEFAULT_LOG_LEVEL})")
    behaviour.add_argument("--log-format", type=parse_log_format, metavar="FORMAT",
                           help=f"text or json (one object per line) (default: {DEFAULT_LOG_FORMAT})")
    behaviour.add_argument("--no-banner", dest="show_banner", action="store_false", default=None,
                           help="don't print the start-up line (the http ready line stays)")
    behaviour.add_argument("--reload", action="store_true", default=None,
                           help="restart the server when a file changes (development)")
    behaviour.add_argument("--no-reload", dest="reload", action="store_false", help="turn --reload off")
    behaviour.add_argument("--reload-dir", dest="reload_dirs", action="append", metavar="DIR",
                           help="folder to watch with --reload, repeatable (default: the server's folder)")
    behaviour.add_argument("--pythonpath", action="append", metavar="DIR",
                           help="folder of extra packages the server imports, searched after the bundle, "
                                "repeatable (make one with mcprun vendor)")
    requirements = parser.add_argument_group(
        "requirements (checked offline against the bundle and --pythonpath folders; nothing is installed)")
    requirements.add_argument("--with", dest="with_packages", action="append", metavar="REQ",
                              help="the server needs this package, e.g. 'pandas>=2'; repeatable")
    requirements.add_argument("--with-requirements", metavar="FILE", help="the server needs what FILE lists")
    requirements.add_argument("--project", metavar="DIR", help="the server needs its project's dependencies "
                                                              "(DIR/pyproject.toml)")
    requirements.add_argument("--python", metavar="VERSION", help="the server needs this Python, e.g. 3.11 or >=3.10")
    requirements.add_argument("--allow-network", action="store_true", default=None,
                              help="with --with/--with-requirements/--project/--python and uv on PATH, let uv "
                                   "fetch what is missing (as fastmcp run does); never without this flag")
    requirements.add_argument("--skip-env", action="store_true", default=None,
                              help="don't check what the server declares it needs (fastmcp.json environment, "
                                   "# /// script, dependencies=)")

    behaviour.add_argument("--no-compat", dest="compat", action="store_false", default=None,
                           help="don't map mcp 1.x APIs (mcp.server.fastmcp, low-level decorators) onto the bundled "
                                "mcp 2.x")
    behaviour.add_argument("--skip-source", action="store_true", default=None,
                           help="skip source preparation (accepted for fastmcp run compatibility; "
                                "local files need none)")
    behaviour.add_argument("--print-config", action="store_true",
                           help="print the effective settings and where each came from, and how the server "
                                "would be served (imports it), then exit")
    return parser


def version_line() -> str:
    """Return mcprun's version with those of the bundled stack, on one line."""
    parts = [f"fastmcp {_version_of('fastmcp')}", f"mcp {_version_of('mcp')}",
             f"Python {platform.python_version()}", f"{platform.system()}-{platform.machine()}"]
    return f"mcprun {__version__} ({', '.join(parts)})"


def parse_command_line(argv: list[str]) -> argparse.Namespace:
    """Parse argv, honouring 'run' and everything after '--' as server arguments."""
    command = "run"
    if argv and argv[0] in COMMANDS:
        command, argv = argv[0], argv[1:]
    end = _options_end(argv)
    args = build_parser().parse_args(argv[:end])
    args.server_args = [*args.server_args, *argv[end + 1:]]
    args.argv = argv
    args.command = command
    return args


# -- settings, 2: config files (fastmcp.json, mcp.json, --policy) -------------


def _is_url(spec: str) -> bool:
    return spec.lower().startswith(("http://", "https://"))


def _is_dotted_name(name: str) -> bool:
    return bool(name) and all(part.isidentifier() for part in name.split("."))


def _is_mcp_config(path: Path) -> bool:
    """Tell an mcp.json (has 'mcpServers') from a fastmcp.json without failing."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if path.name == "mcp.json":  # so a broken one is reported against the mcp.json schema
        return not (isinstance(data, dict) and "source" in data)
    return isinstance(data, dict) and "mcpServers" in data


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """A fastmcp.json file: where the server is and how to deploy it."""

    file: Path
    source_path: Path
    entrypoint: str | None
    deployment: dict
    environment: dict
_SOURCE_KEYS = {"type": str, "path": str, "entrypoint": str}
_DEPLOYMENT_KEYS = {
    "transport": str, "host": str, "port": int, "path": str, "log_level": str,
    "cwd": str, "env": dict, "args": list,
}
_ENVIRONMENT_KEYS = {
    "type": str, "python": str, "dependencies": list, "requirements": str,
    "project": str, "editable": list,
}
_TOP_KEYS = {"$schema", "source", "environment", "deployment"}
_MCP_SERVER_KEYS = {"command": str, "url": str, "args": list, "env": dict, "cwd": str, "headers": dict}


def read_json_file(path: Path) -> Any:
    """Parse a JSON file, turning any failure into one UsageError line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from None


def _check_keys(where: str, data: Any, schema: dict, config: Path, warn_unknown: bool = True) -> dict:
    """Check that data is an object whose known keys have the right JSON types."""
    json_names = {str: "a string", int: "an integer", dict: "an object", list: "an array"}
    if not isinstance(data, dict):
        raise UsageError(f"{config}: '{where}' must be an object")
    for key, value in data.items():
        expected = schema.get(key)
        if expected is None:
            if warn_unknown:
                warn(f"{config}: unknown key '{where}.{key}' ignored")
        elif value is not None and (not isinstance(value, expected) or isinstance(value, bool)):
            raise UsageError(f"{config}: '{where}.{key}' must be {json_names[expected]}")
    return data


def load_server_config(path: Path) -> ServerConfig:
    """Read and check a fastmcp.json file; relative paths are anchored to its folder."""
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object with a 'source' key")
    for key in data:
        if key not in _TOP_KEYS:
            warn(f"{path}: unknown key '{key}' ignored")
    if "source" not in data:
        raise UsageError(
            f"{path}: missing key 'source' (e.g. \"source\": {{\"path\": \"server.py\"}}); "
            "an mcp.json needs 'mcpServers' instead"
        )
    source = _check_keys("source", data["source"], _SOURCE_KEYS, path)
    deployment = _check_keys("deployment", data.get("deployment") or {}, _DEPLOYMENT_KEYS, path)
    environment = _check_keys("environment", data.get("environment") or {}, _ENVIRONMENT_KEYS, path)
    if source.get("type", "filesystem") != "filesystem":
        raise UsageError(f"{path}: 'source.type' {source['type']!r} is not supported; use \"filesystem\"")
    if not source.get("path"):
        raise UsageError(f"{path}: missing key 'source.path' (the server file)")
    if environment.get("type", "uv") != "uv":
        raise UsageError(f"{path}: 'environment.type' {environment['type']!r} is not supported; use \"uv\"")
    source_path, entrypoint = source["path"], source.get("entrypoint")
    file_part, colon, object_part = source_path.rpartition(":")
    if colon and file_part:
        source_path, entrypoint = file_part, entrypoint or object_part
    for key, allowed in (("transport", TRANSPORTS), ("log_level", LOG_LEVELS)):
        value = deployment.get(key)
        if value is not None and value not in allowed:
            raise UsageError(f"{path}: 'deployment.{key}' must be one of {', '.join(allowed)}, not {value!r}")
    if deployment.get("port") is not None and not 0 <= deployment["port"] <= 65535:
        raise UsageError(f"{path}: 'deployment.port' must be 0-65535, not {deployment['port']}")
    if not all(isinstance(a, str) for a in deployment.get("args") or []):
        raise UsageError(f"{path}: 'deployment.args' must be an array of strings")
    if not all(isinstance(v, str) for v in (deployment.get("env") or {}).values()):
        raise UsageError(f"{path}: 'deployment.env' values must be strings")
    folder = Path(os.path.abspath(path.parent))  # not resolve(): a symlinked config's paths are beside the link
    return ServerConfig(
        file=path,
        source_path=Path(os.path.abspath(folder / Path(source_path).expanduser())),
        entrypoint=entrypoint,
        deployment=deployment,
        environment={k: v for k, v in environment.items() if k != "type" and v},
    )


def load_mcp_config(path: Path) -> dict:
    """Read and check an mcp.json file (top-level 'mcpServers')."""
    data = read_json_file(path)
    servers = data.get("mcpServers") if isinstance(data, dict) else None
    if not isinstance(servers, dict) or not servers:
        raise UsageError(f"{path}: 'mcpServers' must be an object with at least one server")
    for name, entry in servers.items():
        where = f"{path}: 'mcpServers.{name}'"
        if not isinstance(entry, dict):
            raise UsageError(f"{where} must be an object with 'command' or 'url'")
        if "command" not in entry and "url" not in entry:
            raise UsageError(f"{where} needs 'command' (a local server) or 'url' (a remote one)")
        # fastmcp takes more keys (transport, auth, timeout, ...): only these are checked here
        _check_keys(f"mcpServers.{name}", entry, _MCP_SERVER_KEYS, path, warn_unknown=False)
        if "url" in entry and not _is_url(entry["url"]):
            raise UsageError(f"{path}: 'mcpServers.{name}.url' must be an http:// or https:// URL")
    return data


def glob_match(name: str, patterns: Any) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


class CallerPolicy:
    """--policy FILE: the tools each caller may see and call. Each line is 'WHO GLOB...': WHO is a caller's
    name (its token's in the token file, its JWT's subject, its client certificate's), scope:S (a JWT with
    scope S) or * (everyone, stdio included); a GLOB that starts with ! leaves tools out (a line of only
    those offers all the others). A tool is offered to a caller when a line for it offers it; a caller no
    line names is offered none. '#' starts a comment line. SIGHUP reads the file again (HTTP)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.rules = self.read()

    def read(self) -> list:
        """[(who, offered globs, left-out globs)] from the file, or one UsageError saying which line is wrong."""
        try:
            text = Path(self.path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--policy {self.path}: {getattr(exc, 'strerror', None) or 'not UTF-8 text'}") from None
        rules = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            who, *globs = line.split()
            if not globs or who in ("scope:", "!") or who.startswith("!"):
                raise UsageError(f"--policy {self.path}, line {number}: '{line.strip()}' is not 'WHO GLOB...' "
                                 "(WHO: a caller's name, scope:SCOPE or *; GLOB: tool names, !GLOB to leave out)")
            offered = tuple(glob for glob in globs if not glob.startswith("!"))
            rules.append((who, offered or ("*",), tuple(glob[1:] for glob in globs if glob.startswith("!"))))
        return rules

    def offers(self, tool: str, caller: str, scopes: Any) -> bool:
        for who, offered, left_out in self.rules:
            if who == "*" or who == caller or who.startswith("scope:") and who[6:] in scopes:
                if glob_match(tool, offered) and not glob_match(tool, left_out):
                    return True
        return False


# -- settings, 3: CLI > fastmcp.json > MCPRUN_* environment > defaults -------


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the user asked for, merged from all sources; read nothing else."""

    spec: str | None
    module: bool = False
    script: bool = False  # run the file as __main__: it starts its own server
    server_args: tuple = ()
    transport: str = DEFAULT_TRANSPORT
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    path: str | None = None
    log_level: str = DEFAULT_LOG_LEVEL
    show_banner: bool = True
    stateless: bool = False
    json_response: bool = False  # streamable HTTP answers as application/json, not text/event-stream
    workers: int = DEFAULT_WORKERS  # HTTP worker processes sharing one listening socket
    reload: bool = False
    reload_dirs: tuple = ()
    skip_source: bool = False
    pythonpath: tuple = ()  # folders of extra packages, searched after the bundle
    auth_token: str | None = None
    auth_token_file: str | None = None
    auth_jwks: str | None = None
    auth_issuer: str | None = None
    auth_resource: str | None = None
    auth_audiences: tuple = ()
    auth_scopes: tuple = ()
    rate_limit: Rate | None = None
    tools: tuple = ()  # the tool policy: globs of the tools offered,
    exclude_tools: tuple = ()  # of those left out,
    read_only: bool = False  # and only tools annotated readOnlyHint;
    policy: str | None = None  # the tools per caller (a CallerPolicy file);
    resources: tuple = ()  # globs of the resource (and template) URIs offered,
    exclude_resources: tuple = ()  # of those left out;
    prompts: tuple = ()  # globs of the prompts offered,
    exclude_prompts: tuple = ()  # of those left out
    audit_log: str | None = None  # a file (or - for stderr) of one JSON line per MCP operation
    audit_arguments: bool = False
    audit_lists: bool = False
    metrics: bool = False  # Prometheus metrics on the HTTP port, at metrics_path
    metrics_path: str = DEFAULT_METRICS_PATH  # given, it implies metrics
    metrics_listen: str | None = None  # HOST:PORT of a listener of the metrics' own
    otlp_endpoint: str | None = None  # an OTLP/HTTP collector (OTEL_EXPORTER_OTLP_*ENDPOINT too: traces_wanted)
    require_auth: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_key_password_file: str | None = None
    tls_client_ca: str | None = None
    allowed_hosts: tuple = ()
    allowed_origins: tuple = ()
    cors_origins: tuple = ()
    health_path: str = DEFAULT_HEALTH_PATH
    ready_path: str = DEFAULT_READY_PATH
    graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT
    max_body: int = DEFAULT_MAX_BODY
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    read_timeout: float = DEFAULT_READ_TIMEOUT
    max_sessions: int = DEFAULT_MAX_SESSIONS
    session_idle_timeout: float = DEFAULT_SESSION_IDLE_TIMEOUT
    log_format: str = DEFAULT_LOG_FORMAT
    access_log: bool = True
    exit_on_upstream_failure: bool = False  # a proxy stops when an upstream stops answering
    compat: bool = True  # map mcp 1.x names onto the bundled mcp 2.x
    with_packages: tuple = ()  # requirements to check before serving (fastmcp run's --with)
    with_requirements: str | None = None
    project: str | None = None
    python: str | None = None
    skip_env: bool = False
    allow_network: bool = False  # with uv on PATH, let uv fetch what --with/--project/... name
    print_config: bool = False
    argv: tuple = ()  # the command line as given (after 'run'), to start a reloaded child with
    config: ServerConfig | None = None
    sources: dict = dataclasses.field(default_factory=dict, compare=False)

    @property
    def http_path(self) -> str:
        """Return the route of the HTTP endpoint."""
        if self.path:
            return self.path if self.path.startswith("/") else "/" + self.path
        return DEFAULT_SSE_PATH if self.transport == "sse" else DEFAULT_HTTP_PATH

    @property
    def debug(self) -> bool:
        return self.log_level == "DEBUG"

# option name -> (how to read it, MCPRUN_* variable, fastmcp.json deployment key);
# "how to read it" is bool, "paths" (os.pathsep-separated), "list" (comma-separated) or an argparse type.
_MERGED_OPTIONS = {
    "transport": (parse_transport, "MCPRUN_TRANSPORT", "transport"),
    "host": (str, "MCPRUN_HOST", "host"),
    "port": (parse_port, "MCPRUN_PORT", "port"),
    "path": (str, "MCPRUN_PATH", "path"),
    "log_level": (parse_log_level, "MCPRUN_LOG_LEVEL", "log_level"),
    "show_banner": (bool, "MCPRUN_NO_BANNER", None),
    "stateless": (bool, "MCPRUN_STATELESS", None),
    "json_response": (bool, "MCPRUN_JSON_RESPONSE", None),
    "workers": (parse_workers, "MCPRUN_WORKERS", None),
    "reload": (bool, "MCPRUN_RELOAD", None),
    "reload_dirs": ("paths", "MCPRUN_RELOAD_DIR", None),
    "skip_source": (bool, "MCPRUN_SKIP_SOURCE", None),
    "pythonpath": ("paths", "MCPRUN_PYTHONPATH", None),
    "auth_token": (str, "MCPRUN_AUTH_TOKEN", None),
    "auth_token_file": (str, "MCPRUN_AUTH_TOKEN_FILE", None),
    "auth_jwks": (str, "MCPRUN_AUTH_JWKS", None),
    "auth_issuer": (str, "MCPRUN_AUTH_ISSUER", None),
    "auth_resource": (str, "MCPRUN_AUTH_RESOURCE", None),
    "auth_audiences": ("list", "MCPRUN_AUTH_AUDIENCE", None),
    "auth_scopes": ("list", "MCPRUN_AUTH_SCOPE", None),
    "rate_limit": (parse_rate, "MCPRUN_RATE_LIMIT", None),
    "tools": ("list", "MCPRUN_TOOLS", None),
    "exclude_tools": ("list", "MCPRUN_EXCLUDE_TOOLS", None),
    "read_only": (bool, "MCPRUN_READ_ONLY", None),
    "policy": (str, "MCPRUN_POLICY", None),
    "resources": ("list", "MCPRUN_RESOURCES", None),
    "exclude_resources": ("list", "MCPRUN_EXCLUDE_RESOURCES", None),
    "prompts": ("list", "MCPRUN_PROMPTS", None),
    "exclude_prompts": ("list", "MCPRUN_EXCLUDE_PROMPTS", None),
    "audit_log": (str, "MCPRUN_AUDIT_LOG", None),
    "audit_arguments": (bool, "MCPRUN_AUDIT_ARGUMENTS", None),
    "audit_lists": (bool, "MCPRUN_AUDIT_LISTS", None),
    "metrics": (bool, "MCPRUN_METRICS", None),
    "metrics_path": (parse_route, "MCPRUN_METRICS_PATH", None),
    "metrics_listen": (parse_listen_address, "MCPRUN_METRICS_LISTEN", None),
    "otlp_endpoint": (parse_otlp_endpoint, "MCPRUN_OTLP_ENDPOINT", None),
    "require_auth": (bool, "MCPRUN_REQUIRE_AUTH", None),
    "tls_cert": (str, "MCPRUN_TLS_CERT", None),
    "tls_key": (str, "MCPRUN_TLS_KEY", None),
    "tls_key_password_file": (str, "MCPRUN_TLS_KEY_PASSWORD_FILE", None),
    "tls_client_ca": (str, "MCPRUN_TLS_CLIENT_CA", None),
    "allowed_hosts": ("list", "MCPRUN_ALLOWED_HOST", None),
    "allowed_origins": ("list", "MCPRUN_ALLOWED_ORIGIN", None),
    "cors_origins": ("list", "MCPRUN_CORS_ORIGIN", None),
    "health_path": (parse_route, "MCPRUN_HEALTH_PATH", None),
    "ready_path": (parse_route, "MCPRUN_READY_PATH", None),
    "graceful_timeout": (parse_seconds, "MCPRUN_GRACEFUL_TIMEOUT", None),
    "max_body": (parse_size, "MCPRUN_MAX_BODY", None),
    "max_connections": (parse_count, "MCPRUN_MAX_CONNECTIONS", None),
    "read_timeout": (parse_seconds, "MCPRUN_READ_TIMEOUT", None),
    "max_sessions": (parse_count, "MCPRUN_MAX_SESSIONS", None),
    "session_idle_timeout": (parse_period, "MCPRUN_SESSION_IDLE_TIMEOUT", None),
    "log_format": (parse_log_format, "MCPRUN_LOG_FORMAT", None),
    "access_log": (bool, "MCPRUN_NO_ACCESS_LOG", None),
    "exit_on_upstream_failure": (bool, "MCPRUN_EXIT_ON_UPSTREAM_FAILURE", None),
    "compat": (bool, "MCPRUN_NO_COMPAT", None),
    "with_packages": ("list", "MCPRUN_WITH", None),
    "with_requirements": (str, "MCPRUN_WITH_REQUIREMENTS", None),
    "project": (str, "MCPRUN_PROJECT", None),
    "python": (str, "MCPRUN_PYTHON", None),
    "skip_env": (bool, "MCPRUN_SKIP_ENV", None),
    "allow_network": (bool, "MCPRUN_ALLOW_NETWORK", None),
}
_NEGATED = ("show_banner", "access_log", "compat")  # set by MCPRUN_NO_* variables
_SECRETS = ("auth_token",)
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _from_environment(name: str, kind: Any, variable: str, environ: dict) -> Any:
    """Read one option from its MCPRUN_* variable, or None when unset."""
    raw = environ.get(variable)
    if raw is None:
        return None
    if kind is bool:
        if raw.strip().lower() not in _TRUE + _FALSE:
            raise UsageError(f"{variable}={raw!r}: expected 1/0, true/false, yes/no or on/off")
        value = raw.strip().lower() in _TRUE
        return not value if name in _NEGATED else value
    if kind == "paths":
        return [part for part in raw.split(os.pathsep) if part]
    if kind == "list":
        return [part.strip() for part in raw.split(",") if part.strip()]
    try:
        return kind(raw)
    except argparse.ArgumentTypeError as exc:
        message = str(exc)
        if message.startswith("invalid choice: "):  # 'invalid choice: 'x' (choose one of ...)'
            message = message.split(" (", 1)[1][:-1]
        raise UsageError(f"{variable}={raw!r}: {message}") from None


def requested_logging(args: argparse.Namespace, environ: dict) -> tuple[str, str]:
    """Return the log level and format to report in until the settings are read (or when they cannot be):
    the command line's, else those of valid MCPRUN_* variables, else the defaults."""
    chosen = []
    for name in ("log_level", "log_format"):
        kind, variable, _ = _MERGED_OPTIONS[name]
        try:
            value = getattr(args, name) or _from_environment(name, kind, variable, environ)
        except UsageError:  # said once the settings are read
            value = None
        chosen.append(value or getattr(Settings(spec=None), name))
    return chosen[0], chosen[1]


def find_default_config() -> Path:
    """Return ./fastmcp.json, used when no SPEC is given."""
    path = Path(CONFIG_FILE_NAME)
    if not path.is_file():
        raise UsageError(
            f"no SPEC given and no {CONFIG_FILE_NAME} in {Path.cwd()}; "
            "give a server, e.g. 'mcprun server.py' (see mcprun --help)"
        )
    return path


def check_combinations(args: argparse.Namespace) -> None:
    """Refuse options given together that do not go together (argparse has said what is wrong with each)."""
    if args.json and args.command != "check":
        raise UsageError("--json goes with 'mcprun check'")
    if (args.output or args.python_version or args.platform or args.resolve_timeout is not None) \
            and args.command not in ("vendor", "pack"):
        raise UsageError("-o/--output, --python-version, --platform and --resolve-timeout go with "
                         "'mcprun vendor' or 'mcprun pack'")
    if args.module and args.script:
        raise UsageError("-m and --script exclude each other: -m runs a module, --script a file")
    if args.command in ("vendor", "pack") and args.spec is None and not Path(CONFIG_FILE_NAME).is_file():
        raise UsageError(f"mcprun {args.command} needs what to {args.command}: packages (mcp-server-git, "
                         "'excel-mcp-server==2.2.2'), a requirements file or a server file")


def check_workers(settings: Settings) -> None:
    """Refuse --workers N > 1 where several processes cannot serve one client correctly."""
    option = f"--workers {settings.workers}"
    if settings.transport == "stdio":
        raise UsageError(f"{option} needs --transport http: over stdio one process serves the one client")
    if settings.transport == "sse":
        raise UsageError(f"{option} does not work with SSE: a client's event stream and the calls it posts must "
                         "reach the same process; use --transport http --stateless, or one worker")
    if settings.reload:
        raise UsageError(f"--reload and {option} exclude each other: --reload restarts one development server; "
                         "send SIGHUP to replace workers with the code on disk")
    if not settings.stateless:
        raise UsageError(f"{option} needs --stateless: a streamable-HTTP session lives in one worker and the "
                         "client's next request may reach another; add --stateless, or run one worker per "
                         "replica with session affinity on the mcp-session-id header")


def check_jwt(settings: Settings) -> None:
    """Refuse JWT options that cannot work: the issuer and this server's URL go with the JWKS."""
    given = [f"--{option}" for option, name in (("auth-issuer", "auth_issuer"), ("auth-resource", "auth_resource"),
                                                ("auth-audience", "auth_audiences"), ("auth-scope", "auth_scopes"))
             if getattr(settings, name)]
    if settings.auth_jwks is None:
        if given:
            raise UsageError(f"{given[0]} needs --auth-jwks FILE|URL, the keys the access tokens are signed with")
        return
    if settings.transport == "stdio":
        raise UsageError("--auth-jwks needs --transport http or sse: over stdio the client is the process owner")
    for option, value, what in (("--auth-issuer", settings.auth_issuer, "the issuer its tokens name"),
                                ("--auth-resource", settings.auth_resource,
                                 "this server's URL, the audience its tokens carry")):
        if not value:
            raise UsageError(f"--auth-jwks needs {option} URL ({what})")
        if not _is_url(value):
            raise UsageError(f"{option} {value!r} is not an http(s):// URL")


def check_tls(settings: Settings) -> None:
    """Refuse TLS options that cannot work together (the files themselves are read when serving)."""
    given = [f"--{name.replace('_', '-')}" for name in ("tls_cert", "tls_key", "tls_key_password_file",
                                                         "tls_client_ca") if getattr(settings, name) is not None]
    if not given:
        return
    if settings.transport == "stdio":
        raise UsageError(f"{given[0]} needs --transport http or sse: stdio has no TLS")
    if settings.tls_cert is None or settings.tls_key is None:
        raise UsageError(f"{given[0]} needs both --tls-cert FILE and --tls-key FILE")


def check_audit_log(path: str) -> None:
    """Say now, in one line, if the audit log cannot be written (it is opened when serving starts)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"--audit-log {path}: is a folder; name a file in it")
    if not os.path.isdir(folder):
        raise UsageError(f"--audit-log {path}: no folder {folder}")
    if not os.access(path if os.path.exists(path) else folder, os.W_OK):
        raise UsageError(f"--audit-log {path}: permission denied")


def traces_wanted(settings: Settings, environ: dict) -> bool:
    """Whether spans are exported: an endpoint was named, by --otlp-endpoint or OpenTelemetry's own variables."""
    return bool(settings.otlp_endpoint or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def load_settings(args: argparse.Namespace, environ: dict) -> Settings:
    """Merge the command line, fastmcp.json, MCPRUN_* variables and defaults."""
    check_combinations(args)
    spec = args.spec
    config = None
    if not args.module:
        if spec is None:
            spec = str(find_default_config())
        if spec.endswith(".json") and not _is_url(spec) and not _is_mcp_config(Path(spec)):
            config = load_server_config(Path(spec))
    deployment = config.deployment if config else {}
    defaults = Settings(spec=None)
    merged, sources = {}, {}
    for name, (kind, variable, deployment_key) in _MERGED_OPTIONS.items():
        # Lazily, in precedence order: an MCPRUN_* variable is read (and checked) only when it would count.
        candidates = (
            (lambda: getattr(args, name), "command line"),
            (lambda: deployment.get(deployment_key) if deployment_key else None, str(config.file if config else "")),
            (lambda: _from_environment(name, kind, variable, environ), variable),
        )
        value, source = getattr(defaults, name), "default"
        for read, origin in candidates:
            if (found := read()) is not None:
                value, source = found, origin
                break
        merged[name], sources[name] = value, source
    merged["log_level"] = merged["log_level"].upper()
    for name in ("reload_dirs", "allowed_hosts", "allowed_origins", "cors_origins", "with_packages", "auth_audiences",
                 "auth_scopes", "tools", "exclude_tools", "resources", "exclude_resources", "prompts", "exclude_prompts"):
        merged[name] = tuple(merged[name])
    merged["pythonpath"] = tuple(os.path.abspath(folder) for folder in merged["pythonpath"])
    merged["metrics"] = merged["metrics"] or sources["metrics_path"] != "default"
    server_args = tuple(args.server_args)
    if not server_args and deployment.get("args"):
        server_args = tuple(deployment["args"])
    settings = Settings(
        spec=spec, module=args.module, script=args.script, server_args=server_args, print_config=args.print_config,
        argv=tuple(args.argv), config=config, sources=sources, **merged,
    )
    if settings.stateless and settings.transport == "sse":
        raise UsageError("--stateless needs --transport http: SSE has no stateless mode")
    if settings.json_response and settings.transport != "http":
        raise UsageError(f"--json-response needs --transport http: {settings.transport} answers only by its own "
                         "stream")
    if settings.workers > 1:
        check_workers(settings)
    if settings.workers > 1 and settings.exit_on_upstream_failure:
        raise UsageError("--exit-on-upstream-failure goes with one process: drop --workers")
    if settings.auth_token is not None and settings.auth_token_file is not None:
        raise UsageError(f"both an auth token ({sources['auth_token']}) and a token file "
                         f"({sources['auth_token_file']}) are set: keep one")
    check_tls(settings)
    check_jwt(settings)
    if settings.policy:
        CallerPolicy(settings.policy)  # read now, to say at once what is wrong with it
    if settings.audit_log and settings.audit_log != "-":
        check_audit_log(settings.audit_log)
    check_metrics(settings)
    return settings


def check_metrics(settings: Settings) -> None:
    """Refuse metrics on a route they cannot have."""
    if not settings.metrics:
        return
    option = "--metrics-path" if settings.sources.get("metrics_path", "default") != "default" else "--metrics"
    if settings.transport == "stdio":
        raise UsageError(f"{option} serves the metrics on the http port; over stdio give --metrics-listen HOST:PORT")
    route = settings.metrics_path
    taken = {settings.http_path: "the MCP endpoint", settings.health_path: "the health route",
             settings.ready_path: "the readiness route"}
    if route in taken:
        raise UsageError(f"{option}: {route} is already {taken[route]}'s route; give another with --metrics-path")


def format_settings(settings: Settings, served: str = "") -> str:
    """Render the effective settings, one 'name = value  (source)' line each; secrets masked."""
    rows = [("spec", settings.spec if not settings.module else f"-m {settings.spec}", "command line")]
    for name in _MERGED_OPTIONS:
        value = getattr(settings, name)
        if name == "path":
            value = settings.http_path
        if isinstance(value, tuple):
            value = ", ".join(value) or ("(server folder)" if name == "reload_dirs" else "(none)")
        if name in _SECRETS and value is not None:
            value = "***"
        rows.append((name, value, settings.sources.get(name, "")))
    rows.append(("server_args", " ".join(settings.server_args) or "(none)", ""))
    if settings.config:
        for key, value in sorted((settings.config.deployment.get("env") or {}).items()):
            rows.append((f"env.{key}", "***" if value else "(empty)", str(settings.config.file)))
        if settings.config.deployment.get("cwd"):
            rows.append(("cwd", settings.config.deployment["cwd"], str(settings.config.file)))
    if served:
        rows.append(("server", served, ""))
    width = max(len(name) for name, _, _ in rows)
    return "\n".join(f"{name:<{width}} = {value}" + (f"  ({src})" if src else "") for name, value, src in rows)


# -- target: what the spec names, found without importing it -----------------


@dataclasses.dataclass(frozen=True)
class ConsoleScript:
    """A console script a distribution declares (entry_points.txt), as pip or uv would install it."""

    name: str
    value: str  # module:attribute
    distribution: str
    version: str
    folder: str  # where the distribution is installed

    @property
    def where(self) -> str:
        return f"{self.distribution} {self.version} in {_short_path(self.folder)}"


@dataclasses.dataclass(frozen=True)
class Target:
    """What to serve and how it was found; user code is not imported yet.

    kind is one of: file, import (pkg.module:obj), module (-m), script (--script or a file that is not .py),
    entry_point (a console script), url, mcp_config. module, script and entry_point start their own server,
    which mcprun catches (SELF_STARTING).
    """

    kind: str
    spec: str
    path: Path | None = None
    module_name: str | None = None
    object_name: str | None = None
    url: str | None = None
    script: ConsoleScript | None = None  # entry_point: the console script and where it comes from
    pythonpath: tuple = ()  # folders the target itself implies (the packages beside pip's bin/ script)
SELF_STARTING = ("module", "script", "entry_point")  # code that starts its own server, which mcprun catches


def console_scripts(folders: tuple) -> list[ConsoleScript]:
    """Return the console scripts of the distributions installed in these folders (reads metadata only)."""
    import importlib.metadata

    found = []
    for folder in folders:
        for distribution in importlib.metadata.distributions(path=[folder]):
            for entry in distribution.entry_points.select(group="console_scripts"):
                found.append(ConsoleScript(entry.name, entry.value.split("[")[0].strip(),
                                           distribution.metadata["Name"], distribution.version, folder))
    return found


def find_console_script(name: str, scripts: list[ConsoleScript]) -> ConsoleScript | None:
    """Return the console script called name, or the only one of the distribution called name, or None."""
    from packaging.utils import canonicalize_name

    for script in scripts:
        if script.name == name:
            return script
    provided = [script for script in scripts if canonicalize_name(script.distribution) == canonicalize_name(name)]
    if len({script.name for script in provided}) > 1:
        raise UsageError(f"{name} has several console scripts: {', '.join(sorted(s.name for s in provided))}; "
                         "give one of them as SPEC")
    if provided:
        info(f"{name} has one console script, {provided[0].name}: running it")
        return provided[0]
    return None
_PIP_SCRIPT = re.compile(r"^from ([\w.]+) import ([\w.]+)\n.*^\s+sys\.exit\(\2\(\)\)", re.M | re.S)


def _pip_script(path: Path) -> str | None:
    """Return 'module:attribute' when path is a console-script wrapper pip wrote (DIR/bin/NAME), else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode("utf-8", "replace")
    except OSError:
        return None
    found = _PIP_SCRIPT.search(head) if head.startswith("#!") else None
    return f"{found[1]}:{found[2]}" if found else None


def _importable(name: str, pythonpath: tuple) -> bool:
    """Tell whether the top-level module of a dotted name can be found, without importing anything."""
    top = name.split(".")[0]
    folders = [os.getcwd(), *sys.path, *pythonpath]
    return top in sys.modules or importlib.machinery.PathFinder.find_spec(top, folders) is not None


def _entry_point_target(script: ConsoleScript, spec: str, path: Path | None = None) -> Target:
    """Build a Target for a console script: its module and attribute, and the file pip wrote for it."""
    module_name, _, object_name = script.value.partition(":")
    installed = Path(script.folder, "bin", script.name)
    return Target("entry_point", spec, path=path or (installed if installed.is_file() else None),
                  module_name=module_name, object_name=object_name or None, script=script,
                  pythonpath=(script.folder,))


def _file_target(file_part: str, object_part: str | None, origin: Path | None) -> Target:
    """Build a Target for a server file, after checking the file and object name."""
    path = Path(file_part).expanduser()
    where = f" (source.path in {origin})" if origin else ""
    if object_part is not None and not _is_dotted_name(object_part):
        raise UsageError(f"{object_part!r} is not a Python name; use file.py:object{where}")
    if path.is_dir():
        if (path / CONFIG_FILE_NAME).is_file():
            raise UsageError(f"{file_part} is a folder; run its config with 'mcprun {path / CONFIG_FILE_NAME}'")
        raise UsageError(f"{file_part} is a folder; give the server file inside it, e.g. {path / 'server.py'}")
    if not path.is_file():
        hint = "" if file_part.endswith(".py") else (
            "; give a .py file, module:object, -m module, fastmcp.json, mcp.json or an http(s):// URL"
        )
        raise UsageError(f"{file_part}: no such file{where}{hint}")
    if path.suffix not in (".py", ".pyw", ""):
        raise UsageError(
            f"{file_part}: unsupported spec; give a .py file, module:object, -m module, "
            "fastmcp.json, mcp.json or an http(s):// URL"
        )
    label = _short_path(path)
    if path.suffix == "" and object_part is None:  # a script: pip's console-script wrapper, or any other
        if value := _pip_script(path):
            root = path.resolve().parent.parent  # pip install --target DIR writes DIR/bin/NAME
            folder = str(next(root.glob("lib/python3*/site-packages"), root))  # or a venv's, or --prefix's
            script = next((s for s in console_scripts((folder,)) if s.name == path.name), None)
            return _entry_point_target(script or ConsoleScript(path.name, value, "?", "?", folder), label,
                                       path=path.resolve())
        return Target("script", label, path=path.resolve())
    return Target("file", f"{label}:{object_part}" if object_part else label,
                  path=path.resolve(), object_name=object_part)


def resolve_target(settings: Settings) -> Target:
    """Turn the spec into a Target, validating its form; raise UsageError if malformed."""
    spec = settings.spec
    if settings.module:
        if not spec:
            raise UsageError("-m needs a module name, e.g. 'mcprun -m my_package.server'")
        if not _is_dotted_name(spec):
            raise UsageError(f"-m needs a module name such as 'my_package.server', not {spec!r}")
        return Target("module", spec, module_name=spec)
    if settings.script:
        if not spec or not spec.endswith(".py") or ":" in spec:
            raise UsageError(f"--script needs a .py file that starts its own server, not {spec!r}")
        return dataclasses.replace(_file_target(spec, None, origin=None), kind="script")  # same checks as a file
    if settings.config:
        config = settings.config
        return _file_target(str(config.source_path), config.entrypoint, origin=config.file)
    assert spec is not None
    if _is_url(spec):
        parsed = urllib.parse.urlsplit(spec)
        if not parsed.hostname:
            raise UsageError(f"{spec!r} is not a valid URL: it has no host")
        return Target("url", spec, url=spec)
    if "://" in spec:
        scheme = spec.split("://", 1)[0]
        raise UsageError(f"unsupported URL scheme {scheme!r} in {spec!r}; mcprun proxies http:// and https:// servers")
    if spec.endswith(".json"):
        path = Path(spec)
        if not path.is_file():
            raise UsageError(f"{spec}: no such file")
        return Target("mcp_config", spec, path=path)  # a fastmcp.json was loaded as settings.config
    file_part, colon, object_part = spec.rpartition(":")
    if not colon:
        file_part, object_part = spec, None
    looks_like_file = file_part.endswith(".py") or os.sep in file_part or "/" in file_part
    # a bare name that is also a folder here ('mcprun vendor NAME -o NAME', then 'mcprun NAME --pythonpath NAME'):
    # a console script of that name comes first
    bare_folder = not looks_like_file and object_part is None and Path(file_part).is_dir()
    if looks_like_file or Path(file_part).exists() and not bare_folder:
        return _file_target(file_part, object_part, origin=None)
    scripts = console_scripts(settings.pythonpath)
    if object_part is None and (script := next((s for s in scripts if s.name == spec), None)):
        return _entry_point_target(script, spec)  # as uvx NAME runs it, even where a module has that name too
    if bare_folder:
        return _file_target(file_part, None, origin=None)  # says it is a folder
    if _is_dotted_name(file_part) and object_part is not None:
        if not _is_dotted_name(object_part):
            raise UsageError(f"{object_part!r} in {spec!r} is not a Python name; use module:object")
        if script := next((s for s in scripts if s.value == spec), None):
            return _entry_point_target(script, spec)  # a console script's function: run as its script runs it
        return Target("import", spec, module_name=file_part, object_name=object_part)
    if _is_dotted_name(file_part) and _importable(file_part, settings.pythonpath):
        return Target("import", spec, module_name=file_part)
    if object_part is None and (script := find_console_script(spec, scripts)):
        return _entry_point_target(script, spec)
    names = sorted({script.name for script in scripts})
    where = (f"console scripts in the --pythonpath folders: {', '.join(names)}" if names else
             "no console script in the --pythonpath folders" if settings.pythonpath else
             f"no --pythonpath folder given: on a connected machine 'mcprun vendor {spec} -o deps' fetches a "
             "package, then add --pythonpath deps")
    raise UsageError(f"{spec!r} is no file, module or console script ({where}); "
                     "give a .py file, module:object, a console script, fastmcp.json, mcp.json or an http(s):// URL")


# -- prepared process, 1: compatibility with older generations of the stack ---
#
# mcp 2.x renamed mcp 1.x's high-level server (mcp.server.fastmcp.FastMCP -> mcp.server.mcpserver.MCPServer)
# and replaced the low-level Server's decorators with constructor arguments, so files written for mcp 1.x
# die on their first lines. mcprun maps the old names onto the bundled ones: only names mcp 2.x lacks, so
# valid 2.x code never changes, and --no-compat turns it all off.


def server_kind(obj: Any) -> str | None:
    """Return 'fastmcp', 'sdk' or 'lowlevel' for a server object this mcprun can serve, else None."""
    from fastmcp import FastMCP
    from mcp.server.lowlevel import Server
    from mcp.server.mcpserver import MCPServer

    if isinstance(obj, FastMCP):
        return "fastmcp"
    if isinstance(obj, MCPServer):
        return "sdk"
    if isinstance(obj, Server):
        return "lowlevel"
    return None
LEGACY_PACKAGE = "mcp.server.fastmcp"
MODERN_PACKAGE = "mcp.server.mcpserver"

# fastmcp 2.x/3.x modules fastmcp 4 split or moved: old name -> the modules that hold its names now
FASTMCP3_MODULES = {
    "fastmcp.server.proxy": ("fastmcp.server.providers.proxy",),
    "fastmcp.tools.tool": ("fastmcp.tools.base", "fastmcp.tools.function_tool"),
    "fastmcp.prompts.prompt": ("fastmcp.prompts.base", "fastmcp.prompts.function_prompt"),
    "fastmcp.resources.resource": ("fastmcp.resources.base", "fastmcp.resources.function_resource"),
}

# FastMCP() arguments fastmcp 4 removed, that mcprun maps: old name -> mcprun setting it becomes (or None)
FASTMCP3_SETTINGS = {"host": "host", "port": "port", "sse_path": "path", "streamable_http_path": "path",
                     "stateless_http": "stateless", "json_response": None, "message_path": None,
                     "log_level": None, "debug": None}
_legacy_request = contextvars.ContextVar("mcprun_legacy_request", default=None)  # for get_context()/request_context


@functools.cache
def legacy_fastmcp_classes() -> tuple:
    """Return (FastMCP, Settings) of mcp 1.x, built on the bundled MCPServer (defined on first use)."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.server import Settings as ModernSettings

    class Settings(ModernSettings):
        """mcp 1.x's settings: the HTTP ones it kept on the server, which mcp 2.x passes to run()."""

        host: str = DEFAULT_HOST
        port: int = DEFAULT_PORT
        mount_path: str = "/"
        sse_path: str = DEFAULT_SSE_PATH
        message_path: str = "/messages/"
        streamable_http_path: str = DEFAULT_HTTP_PATH
        json_response: bool = False
        stateless_http: bool = False
        transport_security: Any = None
        event_store: Any = None
        retry_interval: int | None = None

    rebuild_model(Settings, {**vars(sys.modules[ModernSettings.__module__]), "Any": Any})

    class FastMCP(MCPServer):
        """mcp 1.x's FastMCP: its constructor (argument order, HTTP settings), settings and run methods."""

        def __init__(self, name=None, instructions=None, website_url=None, icons=None, auth_server_provider=None,
                     token_verifier=None, event_store=None, retry_interval=None, *, tools=None, debug=False,
                     log_level="INFO", host=DEFAULT_HOST, port=DEFAULT_PORT, mount_path="/", sse_path="/sse",
                     message_path="/messages/", streamable_http_path="/mcp", json_response=False,
                     stateless_http=False, warn_on_duplicate_resources=True, warn_on_duplicate_tools=True,
                     warn_on_duplicate_prompts=True, dependencies=(), lifespan=None, auth=None,
                     transport_security=None):
            super().__init__(name or "FastMCP", instructions=instructions, website_url=website_url, icons=icons,
                             auth_server_provider=auth_server_provider, token_verifier=token_verifier,
                             tools=tools, debug=debug, log_level=log_level,
                             warn_on_duplicate_resources=warn_on_duplicate_resources,
                             warn_on_duplicate_tools=warn_on_duplicate_tools,
                             warn_on_duplicate_prompts=warn_on_duplicate_prompts,
                             dependencies=list(dependencies), lifespan=lifespan, auth=auth)
            self.settings = Settings(
                **dict(self.settings), host=host, port=port, mount_path=mount_path, sse_path=sse_path,
                message_path=message_path, streamable_http_path=streamable_http_path, json_response=json_response,
                stateless_http=stateless_http, transport_security=transport_security, event_store=event_store,
                retry_interval=retry_interval)

        def run(self, transport="stdio", mount_path=None) -> None:  # mcprun catches the server it starts
            import anyio

            anyio.run({"stdio": self.run_stdio_async, "sse": self.run_sse_async}.get(
                transport, self.run_streamable_http_async))

        async def run_sse_async(self, mount_path=None) -> None:  # 1.x took a mount path
            await MCPServer.run_sse_async(self)

        def sse_app(self, mount_path=None, **options):
            chosen = {"sse_path": self.settings.sse_path, "message_path": self.settings.message_path,
                      "transport_security": self.settings.transport_security, "host": self.settings.host}
            return super().sse_app(**{**chosen, **options})

        def streamable_http_app(self, **options):
            chosen = {"streamable_http_path": self.settings.streamable_http_path,
                      "json_response": self.settings.json_response, "stateless_http": self.settings.stateless_http,
                      "event_store": self.settings.event_store, "retry_interval": self.settings.retry_interval,
                      "transport_security": self.settings.transport_security, "host": self.settings.host}
            return super().streamable_http_app(**{**chosen, **options})

        def get_context(self):
            from mcp.server.mcpserver import Context

            return _legacy_request.get() or Context(mcp_server=self)

        async def call_tool(self, name, arguments, context=None):
            from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError

            token = _legacy_request.set(context)
            try:
                return await super().call_tool(name, arguments, context)
            except UnexpectedToolError as exc:  # mcp 1.x told the client what went wrong; 2.x hides it
                raise ToolError(f"Error executing tool {name}: {exc.__cause__ or exc}") from exc
            finally:
                _legacy_request.reset(token)

    FastMCP.__module__ = Settings.__module__ = LEGACY_PACKAGE
    return FastMCP, Settings


def legacy_names(module_name: str) -> dict:
    """Names an mcp 1.x module had that its mcp 2.x counterpart lacks."""
    suffix = module_name[len(LEGACY_PACKAGE):]
    if suffix in ("", ".server"):
        fastmcp_class, settings_class = legacy_fastmcp_classes()
        return {"FastMCP": fastmcp_class, "Settings": settings_class}
    if suffix == ".exceptions":
        from mcp.server.mcpserver.exceptions import MCPServerError

        return {"FastMCPError": MCPServerError, "ValidationError": type("ValidationError", (MCPServerError,), {})}
    return {}


class LegacyImports(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A sys.meta_path finder serving mcp.server.fastmcp[.*] from the bundled mcp.server.mcpserver[.*]."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == LEGACY_PACKAGE or fullname.startswith(LEGACY_PACKAGE + "."):
            return importlib.util.spec_from_loader(fullname, self, is_package=True)
        if fullname in FASTMCP3_MODULES and importlib.machinery.PathFinder.find_spec(fullname, path) is None:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        if module.__name__ in FASTMCP3_MODULES:
            sources = FASTMCP3_MODULES[module.__name__]
            for source in sources:
                module.__dict__.update((k, v) for k, v in vars(importlib.import_module(source)).items()
                                       if not k.startswith("__"))
            warn(f"{module.__name__} is fastmcp 2.x/3.x: mapped onto {', '.join(sources)} (import from there)")
            return
        modern_name = MODERN_PACKAGE + module.__name__[len(LEGACY_PACKAGE):]
        try:
            modern = importlib.import_module(modern_name)
        except ModuleNotFoundError:
            raise ModuleNotFoundError(f"No module named {module.__name__!r}: mcp 1.x had it, mcp 2.x has no "
                                      f"{modern_name} to map it onto", name=module.__name__) from None
        module.__dict__.update((k, v) for k, v in vars(modern).items() if not k.startswith("__"))
        module.__dict__.update(legacy_names(module.__name__))


def fastmcp3_members(server_class: type) -> dict:
    """fastmcp 2.x/3.x FastMCP API that fastmcp 4 removed, mapped where a faithful mapping exists.

    Each mapping runs only for a call that fastmcp 4 would reject, and says once what replaces it.
    """
    modern_init, modern_mount = server_class.__init__, server_class.mount
    said: set = set()

    def say(old: str, new: str) -> None:
        if old not in said:
            said.add(old)
            warn(f"{old} is fastmcp 2.x/3.x API, mapped by mcprun: {new}")

    def __init__(self, *args, **options):
        chosen = {name: options.pop(name) for name in list(options) if name in FASTMCP3_SETTINGS}
        duplicates = {options.pop(name) for name in list(options) if name.startswith("on_duplicate_")}
        include, exclude = options.pop("include_tags", None), options.pop("exclude_tags", None)
        dependencies = options.pop("dependencies", None)
        if len(duplicates) == 1 and "on_duplicate" not in options:
            options["on_duplicate"] = duplicates.pop()
            say("FastMCP(on_duplicate_tools=...)", "use on_duplicate=")
        modern_init(self, *args, **options)
        if chosen:
            self._mcprun_chosen = {FASTMCP3_SETTINGS[name]: value for name, value in chosen.items()
                                   if FASTMCP3_SETTINGS[name]}
            say(f"FastMCP({', '.join(f'{name}=' for name in chosen)})",
                "served with these unless mcprun's options say otherwise (fastmcp 4: pass them to run_http_async, "
                "or use mcprun's --host/--port/--path/--stateless/--log-level)")
        if include:
            self.enable(tags=set(include), only=True)
            say("FastMCP(include_tags=...)", "server.enable(tags=..., only=True)")
        if exclude:
            self.disable(tags=set(exclude))
            say("FastMCP(exclude_tags=...)", "server.disable(tags=...)")
        if dependencies is not None:
            self._mcprun_dependencies = list(dependencies)
            say("FastMCP(dependencies=...)", "checked offline against the bundle and --pythonpath, never installed")

    __init__.__wrapped__ = modern_init

    def mount(self, *args, **options):
        if len(args) >= 2 and isinstance(args[0], str):  # fastmcp 2.0: mount(prefix, server)
            args = (args[1], args[0], *args[2:])
            say("mount(prefix, server)", "mount(server, namespace=prefix)")
        if "prefix" in options:
            options["namespace"] = options.pop("prefix")
            say("mount(server, prefix=...)", "mount(server, namespace=...)")
        return modern_mount(self, *args, **options)

    class Done:  # fastmcp 2.x's import_server was a coroutine: awaiting the mapped call does nothing more
        def __await__(self):
            return iter(())

    def import_server(self, server, prefix=None):
        say("import_server(server, prefix)", "mount(server, namespace=prefix), a live view instead of a copy")
        modern_mount(self, server, namespace=prefix)
        return Done()

    def as_proxy(cls, backend, **settings):
        from fastmcp.server import create_proxy

        say("FastMCP.as_proxy(backend)", "fastmcp.server.create_proxy(backend)")
        return create_proxy(backend, **settings)

    def switchable(kind: str, components: set) -> Any:
        """tool(), resource() and prompt() took enabled= in fastmcp 2.x: enabled=False is server.disable()."""
        modern = getattr(server_class, kind)

        def register(self, *args, **options):
            if "enabled" not in options:
                return modern(self, *args, **options)
            enabled = options.pop("enabled")
            say(f"{kind}(enabled=...)", f"{kind}() then, for enabled=False, server.disable(names=...)")
            made = modern(self, *args, **options)
            if enabled is not False:
                return made

            def switched_off(result: Any, fn: Any) -> Any:
                uri = options.get("uri") or (args[0] if args and isinstance(args[0], str) else None)
                name = uri if kind == "resource" else options.get("name") or getattr(fn, "__name__", None)
                self.disable(names={name}, components=components)
                return result

            if args and callable(args[0]):  # called with the function: registered now
                return switched_off(made, args[0])
            return lambda fn: switched_off(made(fn), fn)  # a decorator

        return functools.wraps(modern)(register)

    members = {"__init__": __init__, "mount": mount, "tool": switchable("tool", {"tool"}),
               "resource": switchable("resource", {"resource", "template"}),
               "prompt": switchable("prompt", {"prompt"})}
    if not hasattr(server_class, "import_server"):
        members["import_server"] = import_server
    if not hasattr(server_class, "as_proxy"):
        members["as_proxy"] = classmethod(as_proxy)
    return members


def _removed_in_fastmcp4(api: str, replacement: str) -> Any:
    """Return a method that fails with one line naming a removed API and what to do instead."""

    def removed(self, *args, **options):
        raise RuntimeError(f"{api} was removed in fastmcp 4 and mcprun cannot map it: {replacement}")

    return removed


def legacy_context_members() -> dict:
    """Context members mcp 1.x had: ctx.fastmcp (now ctx.mcp_server) and ctx.client_id."""
    return {
        "fastmcp": property(lambda self: self.mcp_server),
        "client_id": property(lambda self: (getattr(self.request_context, "meta", None) or {}).get("client_id")),
    }


async def _complete(func, params):
    import mcp.types as types

    completion = await func(params.ref, params.argument, params.context)
    return types.CompleteResult(completion=completion or types.Completion(values=[], total=None, has_more=None))


def _any_url(uri: str) -> Any:
    """mcp 1.x handed resource URIs to handlers as pydantic AnyUrl."""
    from pydantic import AnyUrl

    try:
        return AnyUrl(uri)
    except ValueError:
        return uri


def _takes_argument(func: Any) -> bool:
    try:
        return len(inspect.signature(func).parameters) > 0
    except (TypeError, ValueError):
        return False


def legacy_lowlevel_members(server_class: type) -> dict:
    """mcp 1.x's low-level Server API: positional constructor arguments, handler decorators, request_context."""
    import base64

    import mcp.types as types
    from mcp.server.lowlevel.helper_types import ReadResourceContents
    from mcp.shared.exceptions import MCPError

    modern_init = server_class.__init__

    def __init__(self, name, *args, **options):
        options.update(zip(("version", "instructions", "website_url", "icons", "lifespan"), args))  # 1.x order
        if options.get("version", "") is None:
            del options["version"]
        modern_init(self, name, **options)

    __init__.__wrapped__ = modern_init

    def handler_decorator(method: str, params_type: Any, call: Any):
        """Return a decorator method registering func (1.x signature) as the 2.x handler of method."""

        def decorator_method(self, *_args, **_options):
            def register(func):
                async def handler(ctx, params):
                    token = _legacy_request.set(ctx)
                    try:
                        return await call(func, params)
                    finally:
                        _legacy_request.reset(token)

                self.add_request_handler(method, params_type, handler)
                return func

            return register

        return decorator_method

    async def call_tool(func, params):
        try:
            result = await func(params.name, params.arguments or {})
        except MCPError:
            raise
        except Exception as exc:  # mcp 1.x: a failing tool is an error result
            return types.CallToolResult(content=[types.TextContent(type="text", text=str(exc))], is_error=True)
        if isinstance(result, types.CallToolResult):
            return result
        structured = None
        if isinstance(result, tuple) and len(result) == 2:
            result, structured = result
        elif isinstance(result, dict):
            result, structured = [types.TextContent(type="text", text=json.dumps(result, indent=2))], result
        return types.CallToolResult(content=list(result), structured_content=structured)

    async def read_resource(func, params):
        result = await func(_any_url(params.uri))
        items = [ReadResourceContents(result)] if isinstance(result, (str, bytes)) else list(result)
        contents = []
        for item in items:
            meta = {"_meta": item.meta} if getattr(item, "meta", None) is not None else {}
            if isinstance(item.content, str):
                contents.append(types.TextResourceContents(uri=params.uri, text=item.content,
                                                           mime_type=item.mime_type or "text/plain", **meta))
            else:
                contents.append(types.BlobResourceContents(uri=params.uri, blob=base64.b64encode(item.content).decode(),
                                                           mime_type=item.mime_type or "application/octet-stream",
                                                           **meta))
        return types.ReadResourceResult(contents=contents)

    async def listing(func, params, result_type, field):
        found = await (func(params) if _takes_argument(func) else func())
        return found if isinstance(found, result_type) else result_type(**{field: list(found)})

    async def empty(result):
        await result
        return types.EmptyResult()

    def request_context(self):
        context = _legacy_request.get()
        if context is None:
            raise LookupError("request_context is only available while a request is handled")
        return context

    paginated = types.PaginatedRequestParams
    return {
        "__init__": __init__,
        "request_context": property(request_context),
        "list_tools": handler_decorator("tools/list", paginated, lambda f, p: listing(
            f, p, types.ListToolsResult, "tools")),
        "call_tool": handler_decorator("tools/call", types.CallToolRequestParams, call_tool),
        "list_resources": handler_decorator("resources/list", paginated, lambda f, p: listing(
            f, p, types.ListResourcesResult, "resources")),
        "list_resource_templates": handler_decorator("resources/templates/list", paginated, lambda f, p: listing(
            f, p, types.ListResourceTemplatesResult, "resource_templates")),
        "read_resource": handler_decorator("resources/read", types.ReadResourceRequestParams, read_resource),
        "list_prompts": handler_decorator("prompts/list", paginated, lambda f, p: listing(
            f, p, types.ListPromptsResult, "prompts")),
        "get_prompt": handler_decorator("prompts/get", types.GetPromptRequestParams,
                                        lambda f, p: f(p.name, p.arguments)),
        "completion": handler_decorator("completion/complete", types.CompleteRequestParams, _complete),
        "set_logging_level": handler_decorator("logging/setLevel", types.SetLevelRequestParams,
                                               lambda f, p: empty(f(p.level))),
        "subscribe_resource": handler_decorator("resources/subscribe", types.SubscribeRequestParams,
                                                lambda f, p: empty(f(_any_url(p.uri)))),
        "unsubscribe_resource": handler_decorator("resources/unsubscribe", types.UnsubscribeRequestParams,
                                                  lambda f, p: empty(f(_any_url(p.uri)))),
    }


def install_compat() -> None:
    """Make mcp 1.x names importable and usable (inert until a server file uses them)."""
    sys.meta_path.insert(0, LegacyImports())
    import mcp.shared.exceptions
    from mcp.server.lowlevel.server import Server
    from mcp.server.mcpserver import Context

    if not hasattr(mcp.shared.exceptions, "McpError"):
        mcp.shared.exceptions.McpError = mcp.shared.exceptions.MCPError
    for name, value in legacy_context_members().items():
        if not hasattr(Context, name):
            setattr(Context, name, value)
    if not hasattr(Server, "call_tool"):  # once: mcp 2.x has none of these
        for name, value in legacy_lowlevel_members(Server).items():
            setattr(Server, name, value)
    import fastmcp
    from fastmcp.server.context import Context as FastMCPContext

    if not hasattr(fastmcp.FastMCP.__init__, "__wrapped__"):
        for name, value in fastmcp3_members(fastmcp.FastMCP).items():
            setattr(fastmcp.FastMCP, name, value)
    for name, replacement in (("sample", "call an LLM from the tool itself (server-initiated sampling is "
                                          "deprecated in MCP, SEP-2577)"),
                              ("list_roots", "take the paths as tool arguments or configuration (roots are "
                                             "deprecated in MCP, SEP-2577)")):
        if not hasattr(FastMCPContext, name):
            setattr(FastMCPContext, name, _removed_in_fastmcp4(f"ctx.{name}()", replacement))


def server_path(server: Any) -> str:
    """Say how mcprun serves this server object, for the DEBUG log."""
    kind = server_kind(server)
    if kind == "sdk" and type(server).__module__ == LEGACY_PACKAGE:
        return "mcp 1.x FastMCP, mapped onto mcp 2.x MCPServer"
    if kind == "fastmcp" and hasattr(server, "_mcprun_chosen"):
        return "fastmcp 4 FastMCP, with fastmcp 2.x/3.x arguments mapped"
    return {"fastmcp": "fastmcp 4 FastMCP", "sdk": "mcp 2.x MCPServer", "lowlevel": "low-level mcp Server"}.get(
        kind, "unknown")


def _where_unset(settings: Settings, wanted: dict, source: str) -> Settings:
    """Return settings with the wanted values for the options the user left at their defaults."""
    changes = {name: value for name, value in wanted.items()
               if settings.sources.get(name, "default") == "default" and value != getattr(settings, name)
               and not (name == "path" and value == settings.http_path)}
    if not changes:
        return settings
    return dataclasses.replace(settings, **changes, sources={**settings.sources, **dict.fromkeys(changes, source)})


def adopt_server_settings(settings: Settings, server: Any) -> Settings:
    """Take the host, port, path and stateless mode an old server chose in its constructor, where the user
    chose none (mcp 1.x FastMCP settings, fastmcp 2.x/3.x FastMCP arguments)."""
    chosen = getattr(server, "settings", None)
    if hasattr(chosen, "streamable_http_path"):
        wanted = {"host": chosen.host, "port": chosen.port, "stateless": chosen.stateless_http,
                  "path": chosen.sse_path if settings.transport == "sse" else chosen.streamable_http_path}
    else:
        wanted = dict(getattr(server, "_mcprun_chosen", None) or {})
    return _where_unset(settings, wanted, "the server's constructor")


# -- prepared process, 2: the --pythonpath folders ---------------------------

MANIFEST = "MANIFEST"


# A Linux wheel platform tag: [1] its family (manylinux_2_28, manylinux2014, musllinux_1_2, linux), [2] [3] a
# manylinux_X_Y's glibc version, [4] a musllinux_1_Y's minor, [5] the machine.
LINUX_PLATFORM = re.compile(r"(manylinux_(\d+)_(\d+)|manylinux2014|manylinux2010|manylinux1|musllinux_1_(\d+)|linux)"
                            r"_(\w+)")


def platform_machine(tag: str) -> str:
    """Return the machine a wheel platform tag is for: aarch64 for manylinux_2_28_aarch64, musllinux_1_2_aarch64
    or linux_aarch64; this machine for any; a tag of another system, whole."""
    found = LINUX_PLATFORM.fullmatch(tag)
    return found[5] if found else platform.machine() if tag == "any" else tag


def check_vendored_for_here(folder: str) -> None:
    """Refuse a vendored folder made for another Python or machine (its MANIFEST says which)."""
    try:
        lines = Path(folder, MANIFEST).read_text().splitlines()
    except OSError:
        return
    said = dict(line.split(" ", 1) for line in lines if line.startswith(("python ", "platform ")))
    running = "%d.%d" % sys.version_info[:2]
    if said.get("python", running) != running:
        raise Failure(f"--pythonpath {_short_path(folder)} was vendored for Python {said['python']}, but mcprun runs "
                      f"{running}: vendor again with 'mcprun vendor ... --python-version {running}'")
    machine = platform.machine()
    if platform_machine(said.get("platform", "any")) != machine:
        raise Failure(f"--pythonpath {_short_path(folder)} was vendored for {said['platform']}, but this machine is "
                      f"{machine}: vendor again with 'mcprun vendor ... --platform {DEFAULT_MANYLINUX}_{machine}'")


def _walk_two_levels(folder: str):
    """Yield os.walk entries for folder, its packages and their subpackages (not deeper)."""
    for entry in os.walk(folder):
        if entry[0].count(os.sep) - folder.rstrip(os.sep).count(os.sep) >= 2:
            entry[1].clear()  # prune: compiled modules sit near a package's top
        yield entry


def vendor_advice(what: str) -> str:
    """Say how to make a --pythonpath folder holding what: mcprun vendor on a connected machine, for this Python."""
    return (f"on a connected machine run 'mcprun vendor {what} --python-version %d.%d -o DIR', "
            "then add --pythonpath DIR" % sys.version_info[:2])


def add_pythonpath(folders: tuple) -> None:
    """Search these folders after the bundle, warning when their compiled modules are for another Python."""
    running = "cpython-%d%d-" % sys.version_info[:2]
    for folder in folders:
        if not os.path.isdir(folder):
            raise UsageError(f"--pythonpath {folder}: no such folder")
        check_vendored_for_here(folder)
        foreign = sorted({name for _, _, names in _walk_two_levels(folder) for name in names
                          if ".cpython-" in name and name.endswith(".so") and running not in name})
        if foreign:
            tag = foreign[0].split(".cpython-")[1].split("-")[0]
            warn(f"--pythonpath {_short_path(folder)} holds modules compiled for CPython {tag[0]}.{tag[1:]} (e.g. {foreign[0]}), "
                 f"but mcprun runs {platform.python_version()}: make it again for this Python; {vendor_advice('...')}")
        if folder not in sys.path:
            sys.path.append(folder)


# -- prepared process, 3: environment, logging, the stdio wire ---------------


def one_line_warnings() -> Any:
    """Return a warnings.showwarning that logs each distinct warning once, as one 'mcprun: warning:' line."""
    shown: set = set()

    def show(message, category, filename, lineno, file=None, line=None):
        if (category, str(message)) not in shown:
            shown.add((category, str(message)))
            warn(f"{category.__name__}: {message} ({_short_path(filename)}:{lineno})")

    return show


@dataclasses.dataclass(frozen=True)
class Prepared:
    """What prepare_process did to this process before the server's code runs, for the stages after it."""

    settings: Settings
    target: Target
    environment: dict  # the variables it set: the offline defaults and fastmcp.json's deployment.env
    cwd: Path | None  # fastmcp.json's deployment.cwd, now the working folder
    pythonpath: tuple  # the folders searched after the bundle: --pythonpath, those the target implies, uv's


def prepare_process(settings: Settings, target: Target) -> Prepared:
    """Set up this process before user code runs: offline defaults, config env and cwd, logging, the mappings
    and the --pythonpath folders (with those the target implies); return what it did."""
    environment = dict(OFFLINE_ENVIRONMENT)
    environment.update({key: value for key, value in OFFLINE_DEFAULTS.items() if key not in os.environ})
    if "FASTMCP_TELEMETRY_MODE" in environment and traces_wanted(settings, os.environ):
        environment["FASTMCP_TELEMETRY_MODE"] = "native"  # fastmcp's own spans, to export
    if os.path.expanduser("~") == "~" and not os.environ.get("XDG_DATA_HOME"):
        # No HOME and no passwd entry (a bare chroot, a container): fastmcp needs a data folder to import.
        environment["XDG_DATA_HOME"] = os.path.join(tempfile.gettempdir(), f"mcprun-{os.getuid()}")
    os.environ.update(environment)
    cwd = None
    if settings.config:
        deployment = settings.config.deployment
        for key, value in (deployment.get("env") or {}).items():
            environment[key] = re.sub(r"\$\{([^}]+)\}", lambda m: os.environ.get(m.group(1), m.group(0)), value)
            os.environ[key] = environment[key]
        if "PYTHONPATH" in (deployment.get("env") or {}):  # set too late for the interpreter to read it
            sys.path.extend(folder for folder in os.environ["PYTHONPATH"].split(os.pathsep) if folder)
        if deployment.get("cwd"):
            cwd = Path(os.path.abspath(settings.config.file.parent / deployment["cwd"]))  # beside a symlink too
            try:
                os.chdir(cwd)
            except OSError as exc:
                raise UsageError(f"{settings.config.file}: 'deployment.cwd' {str(cwd)!r}: {exc.strerror}") from None
    # Import the bundled stack first, so a user's mcp.py or fastmcp.py can't shadow it.
    try:
        build_wire_models_when_used()
        import fastmcp  # noqa: F401
        import mcp.server.mcpserver  # noqa: F401
    except ImportError as exc:
        origin = getattr(sys.modules.get((exc.name or "mcp").split(".")[0]), "__file__", None) or "?"
        raise Failure(f"the bundled fastmcp stack failed to import ({_first_line(exc)}): {origin} shadows it; "
                      "remove fastmcp/mcp and their dependencies from PYTHONPATH") from exc
    configure_logging(settings.log_level, settings.log_format)
    warnings.showwarning = one_line_warnings()
    if settings.compat:
        install_compat()
    folders = tuple(dict.fromkeys((*settings.pythonpath, *target.pythonpath)))
    add_pythonpath(folders)
    prepared = Prepared(settings, target, environment, cwd, folders)
    logging.getLogger("mcprun").debug("prepared: working folder %s; after the bundle: %s; set %s", cwd or os.getcwd(),
                                      ", ".join(folders) or "nothing", " ".join(sorted(environment)))
    return prepared


@contextlib.contextmanager
def stdout_to_stderr() -> Any:
    """Point fd 1 at stderr while the block runs, so that what the server's code prints misses stdout
    (check's report, --print-config); then give fd 1 back, flushing what was printed meanwhile to stderr."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
        os.dup2(2, 1)
    except (OSError, ValueError, AttributeError):
        saved = None
    try:
        yield
    finally:
        if saved is not None:
            try:
                sys.stdout.flush()
            except (OSError, ValueError):
                pass
            os.dup2(saved, 1)
            os.close(saved)


@dataclasses.dataclass(frozen=True)
class Wire:
    """The stdio protocol stream on private descriptors, while fd 0 reads end-of-file and fd 1 writes to stderr;
    grace: seconds the requests read before stdin's end get to be answered (--graceful-timeout)."""

    stdin: int
    stdout: int
    grace: float = DEFAULT_GRACEFUL_TIMEOUT

    def streams(self) -> tuple:
        """Return the stdin and stdout the SDK's stdio_server() takes, over the private descriptors."""
        import io

        import anyio

        reader = io.TextIOWrapper(os.fdopen(self.stdin, "rb", closefd=False), encoding="utf-8", errors="replace")
        writer = io.TextIOWrapper(os.fdopen(self.stdout, "wb", closefd=False), encoding="utf-8")
        return anyio.wrap_file(reader), anyio.wrap_file(writer)


def take_wire() -> Wire:
    """Keep stdin and stdout for the protocol alone, from now until mcprun exits.

    The protocol moves to private descriptors; fd 0 then reads end-of-file and fd 1 writes to
    stderr, so what the server prints or reads, when it is imported, in its lifespan, in a tool,
    in a child process or at exit, buffered or not, misses the wire.
    """
    import fcntl

    sys.stdout.flush()
    try:
        wire = Wire(fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3), fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3))
    except OSError as exc:
        raise UsageError(f"stdio needs an open stdin and stdout ({exc.strerror}): start mcprun from an MCP client, "
                         "or serve with --transport http") from None
    empty, closed = os.pipe()  # reads as end-of-file, even where there is no /dev/null (an empty chroot)
    os.close(closed)
    os.dup2(empty, 0)
    os.close(empty)
    os.dup2(2, 1)
    return wire


class Unanswered:
    """The requests a stdio client sent that the server has not answered yet, so that the end of stdin waits for
    their answers, for up to grace seconds, before the server sees it: the SDK cancels every request in flight at
    the end of its input, and a client that writes its requests and closes stdin (a pipe, a script) would get
    no answers. A request the client cancels needs none."""

    def __init__(self, grace: float) -> None:
        self.grace, self.ids, self.none_left = grace, set(), None

    def read(self, item: Any) -> None:
        message = getattr(item, "message", None)
        method = getattr(message, "method", None)
        if method is not None and getattr(message, "id", None) is not None:
            self.ids.add(message.id)
        elif method == "notifications/cancelled":
            self.answered((getattr(message, "params", None) or {}).get("requestId"))

    def answered(self, request_id: Any) -> None:
        self.ids.discard(request_id)
        if not self.ids and self.none_left is not None:
            self.none_left.set()

    async def wait(self) -> None:
        import anyio

        if not self.ids:
            return
        self.none_left = anyio.Event()
        with anyio.move_on_after(self.grace):
            await self.none_left.wait()
        if self.ids:
            warn(f"stdin closed with {len(self.ids)} request(s) unanswered after {self.grace:g} s "
                 "(--graceful-timeout): cancelled")


class StreamBetween:
    """One of the streams between the SDK's stdio_server() and the server, passed through but for what a subclass
    does; unanswered: the book both keep."""

    def __init__(self, stream: Any, unanswered: Unanswered) -> None:
        self.stream, self.unanswered = stream, unanswered

    def __getattr__(self, name: str) -> Any:  # last_context (the sender's context vars), close, aclose, ...
        return getattr(self.stream, name)

    async def __aenter__(self):
        await self.stream.__aenter__()
        return self

    async def __aexit__(self, *exc):
        return await self.stream.__aexit__(*exc)


class ReadUntilAnswered(StreamBetween):
    """The server's read stream, noting requests; its end waits for their answers."""

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            item = await self.stream.__anext__()
        except StopAsyncIteration:
            await self.unanswered.wait()
            raise
        self.unanswered.read(item)
        return item

    async def receive(self):
        import anyio

        try:
            item = await self.stream.receive()
        except anyio.EndOfStream:
            await self.unanswered.wait()
            raise
        self.unanswered.read(item)
        return item


class WriteNotingAnswers(StreamBetween):
    """The server's write stream, noting each answer to a request it was sent."""

    async def send(self, item: Any) -> None:
        await self.stream.send(item)
        message = getattr(item, "message", None)
        if getattr(message, "method", None) is None and (request_id := getattr(message, "id", None)) is not None:
            self.unanswered.answered(request_id)


# -- prepared process, 4: requirements, what a server declares it needs, checked offline ---
#
# mcprun never installs anything. What a server declares (fastmcp.json 'environment', PEP 723 script
# metadata, --with/--with-requirements/--project/--python, FastMCP(dependencies=...)) is checked
# against what is importable here (the bundle and --pythonpath folders), before the server runs.

_SCRIPT_METADATA = re.compile(r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$")


@dataclasses.dataclass(frozen=True)
class Declared:
    """Requirements and Python versions a server declares, each with where it was declared."""

    requirements: tuple = ()  # (requirement text, origin)
    pythons: tuple = ()  # (version or specifier, origin)


def load_toml(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    return tomllib.loads(text)


def script_metadata(path: Path) -> dict:
    """Return the PEP 723 '# /// script' table of a Python file, or {}."""
    try:
        source = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    blocks = [m for m in _SCRIPT_METADATA.finditer(source) if m["type"] == "script"]
    if not blocks:
        return {}
    content = "".join(line[2:] if line.startswith("# ") else line[1:]
                      for line in blocks[0]["content"].splitlines(keepends=True))
    try:
        return load_toml(content)
    except ValueError as exc:
        raise UsageError(f"{_short_path(path)}: the '# /// script' block is not valid TOML: {exc}") from None


def read_requirements_file(path: Path, origin: str) -> list:
    """Return (requirement, origin) for each line of a requirements file (no options, no includes)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"{origin}: cannot read {path}: {exc.strerror}") from None
    found = [line.split(" #")[0].strip() for line in lines]
    return [(line, f"{origin} ({_short_path(path)})") for line in found if line and not line.startswith(("#", "-"))]


def project_requirements(path: Path, origin: str) -> list:
    """Return (requirement, origin) for the [project] dependencies of a pyproject.toml or its folder."""
    path = path / "pyproject.toml" if path.is_dir() else path
    try:
        project = load_toml(path.read_text(encoding="utf-8")).get("project", {})
    except OSError as exc:
        raise UsageError(f"{origin}: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{origin}: {path} is not valid TOML: {exc}") from None
    return [(text, f"{origin} ({_short_path(path)})") for text in project.get("dependencies") or []]


def declared_requirements(settings: Settings, target: Target) -> Declared:
    """Collect what the config file, the server file and the command line say the server needs."""
    requirements, pythons = [], []
    if settings.config:
        environment, origin = settings.config.environment, str(settings.config.file)
        folder = Path(os.path.abspath(settings.config.file.parent))
        requirements += [(text, origin) for text in environment.get("dependencies") or []]
        if environment.get("requirements"):
            requirements += read_requirements_file(folder / environment["requirements"], origin)
        if environment.get("project"):
            requirements += project_requirements(folder / environment["project"], origin)
        if environment.get("python"):
            pythons.append((environment["python"], origin))
        if environment.get("editable"):
            warn(f"{origin}: 'environment.editable' is not installed; add those folders with --pythonpath")
    if target.path and target.kind in ("file", "script"):
        metadata = script_metadata(target.path)
        origin = f"{_short_path(target.path)} (# /// script)"
        requirements += [(text, origin) for text in metadata.get("dependencies") or []]
        if metadata.get("requires-python"):
            pythons.append((metadata["requires-python"], origin))
    requirements += [(text, "--with") for text in settings.with_packages]
    if settings.with_requirements:
        requirements += read_requirements_file(Path(settings.with_requirements), "--with-requirements")
    if settings.project:
        requirements += project_requirements(Path(settings.project), "--project")
    if settings.python:
        pythons.append((settings.python, "--python"))
    return Declared(tuple(requirements), tuple(pythons))


@functools.cache
def bundled_distributions() -> dict:
    """Return {canonical name: version} of what this mcprun carries: BUNDLE_ROOTS and all they need.

    Walked through the requirements, not listed from sys.path, so that neither --pythonpath folders
    nor the packages of the python3 that runs the zipapp (or of the venv that runs the source) count.
    """
    import importlib.metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict = {}
    todo, seen = [(root, "") for root in BUNDLE_ROOTS], set()
    while todo:
        name, extra = todo.pop()
        if (canonicalize_name(name), extra) in seen:
            continue
        seen.add((canonicalize_name(name), extra))
        try:
            distribution = importlib.metadata.distribution(name)  # the first on sys.path: the bundle's own
        except importlib.metadata.PackageNotFoundError:
            continue
        found[canonicalize_name(name)] = distribution.version
        for text in distribution.requires or ():
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                todo += [(requirement.name, wanted) for wanted in ("", *requirement.extras)]
    return found


def bundled_extras() -> dict:
    """Return {canonical name: {extra: [requirement, ...]}}: what each bundled distribution's extras add."""
    import importlib.metadata

    from packaging.requirements import Requirement

    found: dict = {}
    for name in bundled_distributions():
        distribution = importlib.metadata.distribution(name)
        requirements = [Requirement(text) for text in distribution.requires or ()]
        for extra in distribution.metadata.get_all("Provides-Extra") or ():
            added = [r for r in requirements if r.marker and r.marker.evaluate({"extra": extra})
                     and not r.marker.evaluate({"extra": ""})]
            for requirement in added:
                requirement.marker = None  # the extra was asked for: what it adds stands alone
            found.setdefault(name, {})[extra] = [str(requirement) for requirement in added]
    return found


def requirement_problems(declared: Declared, compat: bool) -> list[str]:
    """Check declared requirements against what is importable here; return one phrase per problem."""
    import importlib.metadata

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.utils import canonicalize_name

    problems, running, bundle = [], platform.python_version(), None
    for text, origin in declared.pythons:
        try:
            wanted = SpecifierSet(text if text[:1] in "<>=!~" else f"=={text}.*" if text.count(".") < 2 else f"=={text}")
        except InvalidSpecifier:
            problems.append(f"Python {text!r} is not a version ({origin})")
            continue
        if not wanted.contains(running, prereleases=True):
            problems.append(f"Python {text} (this is {running}; {origin})")
    for text, origin in declared.requirements:
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            problems.append(f"{text!r} is not a requirement ({origin})")
            continue
        name = canonicalize_name(requirement.name)
        if requirement.marker and not requirement.marker.evaluate():
            continue
        if compat and name in ("mcp", "fastmcp"):
            continue  # older generations are served through the mappings
        try:
            have = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            if importlib.util.find_spec(name.replace("-", "_")) is None:
                problems.append(f"{requirement} (not installed; {origin})")
            continue
        if requirement.specifier and not requirement.specifier.contains(have, prereleases=True):
            bundle = bundle if bundle is not None else bundled_distributions()
            bundled = " in the bundle, which --pythonpath cannot replace" if name in bundle else ""
            problems.append(f"{requirement} (have {have}{bundled}; {origin})")
    return problems


def check_requirements(declared: Declared, settings: Settings, where: str) -> None:
    """Raise one Failure listing every declared requirement this mcprun cannot meet (none with --skip-env)."""
    problems = [] if settings.skip_env else requirement_problems(declared, settings.compat)
    if not problems:
        return
    missing = [text for text, _ in declared.requirements if any(problem.startswith(f"{text} (not installed;")
                                                                 for problem in problems)]
    fetch = " ".join(f'--with "{text}"' for text in missing)
    vendor = f"; {vendor_advice(f'{where} {fetch}')}" if missing else ""
    raise Failure(f"{where} needs what this mcprun does not have: {', '.join(problems)}{vendor}; "
                  "or start anyway with --skip-env")


def bundle_constraints(folder: str, versions: dict) -> Path:
    """Write a constraints file pinning the bundle's versions into folder, for pip or uv to resolve around."""
    constraints = Path(folder, "bundle.txt")
    constraints.write_text("".join(f"{name}=={version}\n" for name, version in sorted(versions.items())))
    return constraints


def last_error(said: str) -> str:
    """Return the line a failed pip or uv run says most about: its last ERROR line, else its last line."""
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    return next((line for line in reversed(lines) if line.startswith("ERROR")), lines[-1] if lines else "")


def fetch_with_uv(settings: Settings) -> Settings:
    """--allow-network: have uv install what the command line names into a cached folder searched after the bundle.

    Only for requirements the user named (--with, --with-requirements, --project), only with uv on
    PATH: what fastmcp run hands to 'uv run'. The folder is built for this Python and kept in
    mcprun's cache, so the next start needs no network.
    """
    uv = shutil.which("uv")
    sources = [*settings.with_packages]
    if settings.with_requirements:
        sources += ["-r", settings.with_requirements]
    if settings.project:
        project = Path(settings.project)
        sources += ["-r", str(project / "pyproject.toml" if project.is_dir() else project)]
    if not uv or not sources:
        return settings
    python = "%d.%d" % sys.version_info[:2]
    named = [Path(item).read_text(errors="replace") if Path(item).is_file() else item for item in sources]
    key = hashlib.sha256(json.dumps([named, python, platform.machine()]).encode()).hexdigest()[:16]
    cache = this_program().cache / f"uv-{key}"
    if not (cache / ".complete").exists():
        info(f"--allow-network: uv is fetching {' '.join(sources)} into {cache}")
        with tempfile.TemporaryDirectory(prefix="mcprun-uv-") as scratch:
            constraints = bundle_constraints(scratch, bundled_distributions())
            result = subprocess.run([uv, "pip", "install", "--quiet", "--target", str(cache), "--python-version",
                                     python, "--constraint", str(constraints), *sources],
                                    capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            reason = last_error(result.stderr) or f"uv exited with {result.returncode}"
            raise Failure(f"uv could not fetch {' '.join(sources)}: {reason}")
        (cache / ".complete").touch()
    add_pythonpath((str(cache),))
    return dataclasses.replace(settings, pythonpath=(*settings.pythonpath, str(cache)))


def meet_requirements(prepared: Prepared) -> Prepared:
    """The gate before the server's code runs: what it declares must be met by the bundle and the
    --pythonpath folders (with --allow-network, uv fetches what is missing first); return the process
    to serve in (uv's folder added)."""
    settings, target = prepared.settings, prepared.target
    if settings.skip_env:
        return prepared
    declared = declared_requirements(settings, target)
    if settings.allow_network and requirement_problems(declared, settings.compat):
        settings = fetch_with_uv(settings)
        prepared = dataclasses.replace(prepared, settings=settings, pythonpath=tuple(
            dict.fromkeys((*prepared.pythonpath, *settings.pythonpath))))
    check_requirements(declared, settings, settings.spec if settings.config else target.spec)
    return prepared


def server_dependencies(server: Any) -> Declared:
    """Requirements a server object declares itself: FastMCP(dependencies=...) of mcp 1.x and fastmcp 2/3."""
    found = getattr(getattr(server, "settings", None), "dependencies", None) or getattr(
        server, "_mcprun_dependencies", None) or []
    name = getattr(server, "name", None) or "the server"
    return Declared(tuple((text, f"FastMCP({name!r}, dependencies=...)") for text in found if isinstance(text, str)))


# -- the server object, 1: catching the server that code starts itself --------
#
# Console scripts, -m modules and --script files start their own server: FastMCP.run(), MCPServer.run(),
# run_stdio_async(), a low-level Server.run() over stdio_server(), at module level or inside main()
# under asyncio.run or anyio.run. mcprun catches the server object where it starts and serves it
# itself, on the transport, address and gateway the user chose (where the user chose none, those the
# code asked for). Whatever mcprun itself serves runs with _driving set, and is let through.

_driving = contextvars.ContextVar("mcprun_driving", default=None)  # while mcprun serves: a Wire on stdio, else True


class Catcher:
    """Where the servers that code starts itself go: on_start(server, transport, options).

    A failure to serve is kept as well as raised: the code that started the server may catch it
    (except Exception: print, sys.exit(1)), and mcprun must still say it in its one line.
    """

    def __init__(self, on_start: Any) -> None:
        self.on_start = on_start
        self.started = 0
        self.failure: Exception | None = None

    async def start(self, server: Any, transport: str, options: dict) -> None:
        self.started += 1
        transport = "http" if transport == "streamable-http" else transport
        try:
            await self.on_start(server, transport, {name: value for name, value in options.items()
                                                     if value is not None})
        except Exception as exc:
            self.failure = exc
            raise

    def raise_failure(self) -> None:
        """Raise what serving the caught server failed with, if it did."""
        if self.failure is not None:
            raise self.failure


class StartedItself(BaseException):
    """Raised through the user's code to stop it once the server it started has been looked at (check)."""

    def __init__(self, server: Any, report: dict | None = None) -> None:
        super().__init__()
        self.server, self.report = server, report


def catch_started_servers(catcher: Catcher) -> None:
    """Send every server that code starts itself to catcher, once per process.

    Patched: the run methods of fastmcp's FastMCP and the SDK's MCPServer; stdio_server(), which,
    called by the code itself, yields streams that carry nothing (the names fastmcp and the SDK
    imported too); and a low-level Server.run() over those streams. This is the one place that
    replaces upstream attributes; a name that moved fails here, loudly.
    """
    import fastmcp
    import fastmcp.server.mixins.transport
    import mcp.server.mcpserver.server
    import mcp.server.stdio
    from mcp.server.lowlevel.server import Server
    from mcp.server.mcpserver import MCPServer

    def caught(owner: type, method: str, options_of: Any) -> None:
        original = getattr(owner, method)

        async def start(self, *args, **options):
            if _driving.get() is not None:  # mcprun serves this server itself
                return await original(self, *args, **options)
            transport, chosen = options_of(*args, **options)
            await catcher.start(self, transport, chosen)

        setattr(owner, method, functools.wraps(original)(start))

    def http(host=None, port=None, log_level=None, path=None, *_, stateless_http=None, stateless=None, sse_path=None,
             streamable_http_path=None, **__):
        return {"host": host, "port": port, "path": path or sse_path or streamable_http_path,
                "stateless": stateless_http if stateless_http is not None else stateless}

    caught(fastmcp.FastMCP, "run_async", lambda transport=None, show_banner=None, **options: (
        transport or fastmcp.settings.transport, http(**options)))
    caught(fastmcp.FastMCP, "run_stdio_async", lambda *_, **__: ("stdio", {}))
    caught(fastmcp.FastMCP, "run_http_async", lambda show_banner=True, transport="http", *args, **options: (
        transport, http(*args, **options)))
    caught(MCPServer, "run_stdio_async", lambda: ("stdio", {}))
    caught(MCPServer, "run_sse_async", lambda **options: ("sse", http(**options)))
    caught(MCPServer, "run_streamable_http_async", lambda **options: ("http", http(**options)))

    original_stdio_server, original_run, placeholders = mcp.server.stdio.stdio_server, Server.run, set()

    @contextlib.asynccontextmanager
    async def stdio_server(stdin=None, stdout=None):
        wire = _driving.get()
        if stdin is None and stdout is None and not isinstance(wire, Wire):
            import anyio  # the code starts a stdio transport of its own: mcprun serves its server instead

            to_server, read_stream = anyio.create_memory_object_stream(0)
            write_stream, unread = anyio.create_memory_object_stream(0)
            to_server.close()
            unread.close()
            placeholders.add(read_stream)
            try:
                yield read_stream, write_stream
            finally:
                placeholders.discard(read_stream)
            return
        if stdin is None and stdout is None:
            stdin, stdout = wire.streams()
        async with original_stdio_server(stdin, stdout) as (read_stream, write_stream):
            if not isinstance(wire, Wire):
                yield read_stream, write_stream
                return
            unanswered = Unanswered(wire.grace)
            yield ReadUntilAnswered(read_stream, unanswered), WriteNotingAnswers(write_stream, unanswered)

    async def run(self, read_stream, write_stream, initialization_options, *args, **options):
        if read_stream not in placeholders:
            return await original_run(self, read_stream, write_stream, initialization_options, *args, **options)
        self.create_initialization_options = lambda *_, **__: initialization_options  # as the code chose them
        await catcher.start(self, "stdio", {})

    Server.run = functools.wraps(original_run)(run)
    for module in (mcp.server.stdio, mcp.server.mcpserver.server, fastmcp.server.mixins.transport):
        if getattr(module, "stdio_server", None) is not original_stdio_server:
            raise RuntimeError(f"mcprun: {module.__name__}.stdio_server moved; mcprun's stdio needs updating")
        module.stdio_server = stdio_server


def ended_early(label: str, exc: SystemExit, catcher: Catcher) -> None:
    """The code called sys.exit(): fine once its server has run, or with code 0 (--help, --version);
    else one error line with its exit code."""
    if catcher.started or exc.code in (None, 0):
        if not catcher.started:
            warn(f"{label} exited without starting a server")
        return None
    if isinstance(exc.code, int):
        raise Failure(f"{label} exited with code {exc.code} before it started a server (its own message is "
                      "above)", exit_code=exc.code)
    raise Failure(f"{label}: {exc.code}")


# -- the server object, 2: import the user's code, find the server, load it ---


def _package_root(path: Path) -> tuple[Path, str]:
    """Return (folder to put on sys.path, dotted module name) for a file, package-aware."""
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file() and folder.name.isidentifier():
        parts.insert(0, folder.name)
        folder = folder.parent
    return folder, ".".join(parts)


def syntax_error(exc: SyntaxError, label: str) -> Failure:
    """Say where the server's code does not parse."""
    where = f"{_short_path(exc.filename)}:{exc.lineno}" if exc.filename else label
    return Failure(f"syntax error in {where}: {exc.msg}")


def not_installed(label: str, module: str, script: ConsoleScript | None = None) -> str:
    """Say that label imports a module mcprun lacks, and how to vendor it for this Python."""
    if script and script.version != "?":
        return (f"{label} imports {module!r}, which is not installed: {script.folder} lacks what "
                f"{script.distribution} {script.version} needs; "
                f"{vendor_advice(f'{script.distribution}=={script.version}')}")
    return (f"{label} imports {module!r}, which is not installed: mcprun bundles fastmcp, mcp, httpx and their "
            f"dependencies only; {vendor_advice('PACKAGE')} (PACKAGE: the one that provides {module!r})")


def import_server_module(target: Target) -> Any:
    """Import the target's module as Python would, turning failures into one-line errors."""
    if target.kind == "file":
        path = target.path
        root, module_name = _package_root(path)
        folders = list(dict.fromkeys((str(path.parent), str(root))))
        sys.path[:] = folders + [entry for entry in sys.path if entry not in folders]
        if "." not in module_name and (not module_name.isidentifier() or module_name in sys.modules):
            module_name = "server_module"  # a file named like a loaded module: keep both
        label = _short_path(path)
    else:
        module_name = target.module_name
        if "" not in sys.path and os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        label = f"console script {target.spec!r}" if target.kind == "entry_point" else f"module '{module_name}'"
    try:
        if target.kind == "file" and "." not in module_name:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(module_name, None)
                raise
            return module
        return importlib.import_module(module_name)
    except SyntaxError as exc:
        raise syntax_error(exc, label) from exc
    except ModuleNotFoundError as exc:
        requested = module_name.split(".")
        prefixes = {".".join(requested[: i + 1]) for i in range(len(requested))}
        if target.kind == "import" and exc.name in prefixes and target.object_name is None:
            raise UsageError(
                f"{target.spec!r} is neither a file nor a module (looked in {os.getcwd()} and the bundle); "
                "give a .py file, module:object, -m module, fastmcp.json, mcp.json or an http(s):// URL"
            ) from exc
        if target.kind == "import" and exc.name in prefixes:
            raise UsageError(
                f"module {module_name!r} not found (looked in {os.getcwd()} and the bundle); "
                "check the name, or run mcprun from the folder that holds it"
            ) from exc
        bundled = (exc.name or "").split(".")[0]
        if bundled in BUNDLED_PACKAGES:  # e.g. mcp.server.fastmcp, gone in mcp 2.x
            raise Failure(f"{label} imports {exc.name!r}, which the bundled {bundled} "
                          f"{_version_of(bundled.replace('_', '-'))} does not have: {_first_line(exc)}") from exc
        raise Failure(not_installed(label, exc.name, target.script)) from exc
    except Exception as exc:
        raise Failure(f"importing {label} failed: {_describe(exc)}") from exc


def _a_type(obj: Any) -> str:
    """Return 'None', 'an int' or 'a dict': what obj is, for a message."""
    name = type(obj).__name__
    return "None" if obj is None else f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


def _public_names(module: Any) -> list[str]:
    """Return the public names a module defines itself (not the modules, classes, functions it imports)."""
    def defined_here(value: Any) -> bool:
        if inspect.isclass(value) or inspect.isroutine(value):
            return getattr(value, "__module__", None) == module.__name__
        return not inspect.ismodule(value)

    return [name for name, value in vars(module).items() if not name.startswith("_") and defined_here(value)][:12]


def _scripts_of(module_name: str) -> list[str]:
    """Return the console scripts (of the distributions on sys.path) that run a function of this module."""
    import importlib.metadata

    return sorted({entry.name for entry in importlib.metadata.entry_points(group="console_scripts")
                   if entry.value.split(":")[0].strip() == module_name})


def _has_main_block(module: Any) -> bool:
    try:
        source = Path(module.__file__).read_text(encoding="utf-8", errors="replace")
    except (OSError, TypeError):
        return False
    return re.search(r"""^if\s+__name__\s*==\s*['"]__main__['"]\s*:""", source, re.M) is not None


def _is_factory(obj: Any) -> bool:
    """A function, method or other callable (a click command, say) that may return or start a server."""
    return callable(obj) and not inspect.isclass(obj)


def find_server_object(module: Any, target: Target) -> tuple[str, Any]:
    """Return (name, object) for the target's server object or factory."""
    label = _short_path(target.path) if target.path else f"module {target.module_name!r}"
    if target.object_name:
        obj = module
        for attribute in target.object_name.split("."):
            if not hasattr(obj, attribute):
                raise UsageError(
                    f"{label} has no attribute {target.object_name!r}; "
                    f"it defines: {', '.join(_public_names(module)) or 'nothing public'}"
                )
            obj = getattr(obj, attribute)
        if server_kind(obj) is None and not _is_factory(obj):
            raise UsageError(
                f"{target.object_name!r} in {label} is {_a_type(obj)}, not an MCP server "
                "(FastMCP, MCPServer or a low-level Server) or a function that returns one"
            )
        return target.object_name, obj
    for name in SERVER_NAMES:
        obj = getattr(module, name, None)
        if server_kind(obj) is not None:
            return name, obj
    servers = [(name, obj) for name, obj in vars(module).items()
               if not name.startswith("_") and server_kind(obj) is not None]
    if len(servers) == 1:  # as mcp 1.x's CLI did
        info(f"using {servers[0][0]!r}, the only server object in {label}")
        return servers[0]
    found = [f"{name} ({type(obj).__name__})" for name, obj in servers]
    unsupported = [f"{name} is {_a_type(getattr(module, name))}" for name in SERVER_NAMES if hasattr(module, name)]
    hint = f"; server objects found: {', '.join(found)}; use {target.spec}:NAME" if found else (
        f"; none found either — create one (mcp = FastMCP(...)) or name a factory with {target.spec}:NAME"
    )
    if not found and _has_main_block(module):
        hint = "; it starts its own server under 'if __name__ == \"__main__\"': run it with --script"
    scripts = [] if found or target.kind != "import" else _scripts_of(module.__name__)
    if scripts:
        hint = f"; it belongs to console script {scripts[0]}, which starts the server: run 'mcprun {scripts[0]}'"
    tried = ", ".join(SERVER_NAMES) + (f" ({'; '.join(unsupported)})" if unsupported else "")
    raise UsageError(f"no server object in {label}: tried {tried}{hint}")


def _check_factory_signature(name: str, factory: Any) -> None:
    """Refuse a factory that needs arguments, before calling it."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return
    required = [p.name for p in parameters if p.default is p.empty
                and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if required:
        raise UsageError(f"factory {name!r} needs arguments ({', '.join(required)}); "
                         "mcprun calls factories with none: give them defaults")


def _checked_server(name: str, obj: Any, module: Any = None) -> Any:
    if server_kind(obj) is None:
        servers = [n for n, value in vars(module).items() if server_kind(value) is not None] if module else []
        hint = f"; or serve its server object: {module.__name__}:{servers[0]}" if servers else ""
        raise UsageError(f"factory {name!r} returned {_a_type(obj)}, not an MCP server (FastMCP, MCPServer or a "
                         f"low-level Server) and started none; make it return one{hint}")
    return obj


async def await_factory(factory: Any, catcher: Catcher) -> Any:
    """Await an async factory inside the serving event loop, so its resources live there; None when it
    started a server itself (catcher took it)."""
    try:
        result = await factory()
    except Exception as exc:
        raise Failure(f"factory {factory.__name__!r} raised {_describe(exc)}") from exc
    return None if catcher.started else _checked_server(factory.__name__, result, inspect.getmodule(factory))


def url_address(url: str) -> tuple:
    """(host, port) of an http(s) URL, the port its scheme's when it names none."""
    parsed = urllib.parse.urlsplit(url)
    return parsed.hostname, parsed.port or (443 if parsed.scheme.lower() == "https" else 80)


def check_url_reachable(url: str) -> None:
    """Open and close a TCP connection to the URL's host, bounded in time."""
    try:
        socket.create_connection(url_address(url), timeout=URL_CONNECT_TIMEOUT).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise Failure(f"cannot reach {url}: {reason}; check the URL and that the server is up") from None


CHILD_PROXIES: dict = {}  # the proxy of each stdio server of the mcp.json served, by name (proxy_of_servers)


def proxy_of_servers(config: dict, path: Path) -> Any:
    """The proxy of an mcp.json's servers: fastmcp's, but with several servers built once, each mounted under
    its name, so that each keeps its connection (a stdio server its process) from one request to the next;
    fastmcp's own builds them all again, and starts every stdio server anew, for each request."""
    from fastmcp import FastMCP
    from fastmcp.server import create_proxy

    servers = config["mcpServers"]
    try:
        if len(servers) == 1:
            proxies = {name: create_proxy(config) for name in servers}
            CHILD_PROXIES.update((name, proxy) for name, proxy in proxies.items() if "command" in servers[name])
            return proxies.popitem()[1]
        router = FastMCP(path.name)
        for name, entry in servers.items():
            proxy = create_proxy({**config, "mcpServers": {name: entry}})
            router.mount(proxy, namespace=name)
            if "command" in entry:
                CHILD_PROXIES[name] = proxy
        return router
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path}: {_first_line(exc)}") from exc


class Upstreams:
    """What a proxy forwards to (a URL spec's URL; an mcp.json's url entries and stdio servers), and whether
    each answers within UPSTREAM_PROBE_TIMEOUT: a URL takes a TCP connection, a stdio server lists its tools
    (fastmcp's proxy starts one that died again, so a server that cannot start again is down)."""

    def __init__(self, target: Target) -> None:
        self.urls: tuple = (target.url,) if target.kind == "url" else ()
        self.children: dict = dict(CHILD_PROXIES) if target.kind == "mcp_config" else {}
        self.probes: dict = {}  # a stdio server's name -> its probe (an asyncio task)
        if target.kind == "mcp_config":
            self.urls = tuple(entry["url"] for entry in load_mcp_config(target.path)["mcpServers"].values()
                              if "url" in entry)

    def __bool__(self) -> bool:
        return bool(self.urls or self.children)

    async def down(self) -> str | None:
        """The first upstream that does not answer (a URL, or 'mcp.json server NAME'); else None."""
        import anyio

        for url in self.urls:
            try:
                with anyio.fail_after(UPSTREAM_PROBE_TIMEOUT):
                    await (await anyio.connect_tcp(*url_address(url))).aclose()
            except (OSError, TimeoutError):
                return url
        for name, proxy in self.children.items():
            if not await self.lists_tools(name, proxy):
                return f"mcp.json server {name}"
        return None

    async def lists_tools(self, name: str, proxy: Any) -> bool:
        """Whether the stdio server lists its tools within UPSTREAM_PROBE_TIMEOUT. The probe runs on past
        that, so that a server slower to start than that gets started (and is up at the next probe)."""
        import asyncio

        if name not in self.probes or self.probes[name].done():
            self.probes[name] = asyncio.ensure_future(self._list_tools(proxy))
        try:
            return await asyncio.wait_for(asyncio.shield(self.probes[name]), UPSTREAM_PROBE_TIMEOUT)
        except asyncio.TimeoutError:
            return False

    @staticmethod
    async def _list_tools(proxy: Any) -> bool:
        """Ask the proxy's providers themselves: a client of the proxy would get an empty list from a server
        that cannot start, since fastmcp's aggregate logs a provider's error and lists the others."""
        import anyio

        try:
            with anyio.fail_after(CHECK_TIMEOUT):
                for provider in proxy.providers:
                    await provider.list_tools()
            return True
        except Exception:  # whatever stops it answering: it is down
            return False

    async def watch(self) -> str:
        """--exit-on-upstream-failure: probe every UPSTREAM_WATCH_INTERVAL seconds; return what failed once
        an upstream has not answered UPSTREAM_FAILURES probes in a row."""
        import anyio

        failed = 0
        while True:
            await anyio.sleep(UPSTREAM_WATCH_INTERVAL)
            down = await self.down()
            failed = failed + 1 if down else 0
            if down and failed >= UPSTREAM_FAILURES:
                return (f"the upstream {down} has not answered {failed} probes in a row "
                        f"({UPSTREAM_WATCH_INTERVAL * failed:g} s): stopping (--exit-on-upstream-failure)")


def load_server(settings: Settings, target: Target, catcher: Catcher) -> Any:
    """Import user code and return a server, an async factory to await in the event loop, or None when the
    code started a server itself (catcher took it: at import, or in a function named as SPEC)."""
    if target.kind == "url":
        check_url_reachable(target.url)
        from fastmcp.server import create_proxy

        return create_proxy(target.url)
    if target.kind == "mcp_config":
        return proxy_of_servers(load_mcp_config(target.path), target.path)
    module = import_server_module(target)
    if catcher.started:  # its module-level code started the server
        return None
    name, obj = find_server_object(module, target)
    if server_kind(obj) is not None:
        return obj
    _check_factory_signature(name, obj)
    if inspect.iscoroutinefunction(obj):
        return obj
    try:
        result = obj()  # a factory, or a command-line entry point that starts a server: caught
    except SystemExit as exc:
        return ended_early(f"{name!r} in {target.spec}", exc, catcher)
    except Exception as exc:
        raise Failure(f"factory {name!r} raised {_describe(exc)}") from exc
    return None if catcher.started else _checked_server(name, result, module)


# -- the server object, 3: running code that starts its own server, as python would ---


def adopt_started(settings: Settings, transport: str, options: dict) -> Settings:
    """Take the transport, host, port, path and stateless mode the code started its server with, where the
    user chose none."""
    return _where_unset(settings, {"transport": transport, **options}, "the server's code")


def run_self_starting(settings: Settings, target: Target, catcher: Catcher) -> None:
    """Run code that starts its own server as python would run it, sys.argv as it would see it: a module
    (-m), a script file (--script, or a file that is not .py) or a console script. The server it starts
    goes to catcher; a script that starts none but defines a server object has that served instead."""
    import runpy

    label = {"module": f"module {target.spec!r}", "entry_point": f"console script {target.spec!r}"}.get(
        target.kind, _short_path(target.path) if target.path else target.spec)
    sys.argv = [str(target.path or target.spec), *settings.server_args]
    defined: dict = {}
    try:
        if target.kind == "module":
            if "" not in sys.path:
                sys.path.insert(0, "")
            runpy.run_module(target.spec, run_name="__main__", alter_sys=True)
        elif target.kind == "script":
            sys.path.insert(0, str(target.path.parent))
            defined = runpy.run_path(str(target.path), run_name="__main__")
        else:
            entry = import_server_module(target)
            for attribute in target.object_name.split(".") if target.object_name else ():
                entry = getattr(entry, attribute)
            result = entry()
            if not catcher.started and server_kind(result) is not None:  # it returned a server to serve
                defined = {"server": result}
            elif not catcher.started and result not in (None, 0):
                raise SystemExit(result)  # console scripts run sys.exit(main())
    except SystemExit as exc:
        ended_early(label, exc, catcher)
        return
    except ImportError as exc:
        if target.kind == "module" and (exc.name is None or f"{target.spec}.".startswith(f"{exc.name}.")):
            # runpy's own errors carry no name: the module (or its __main__) was not found
            raise UsageError(f"cannot run module {target.spec!r}: {_first_line(exc)}; check the name, or run "
                             "mcprun from the folder that holds it (or add --pythonpath DIR)") from None
        if not isinstance(exc, ModuleNotFoundError) or target.kind == "entry_point":
            raise
        raise Failure(not_installed(label, exc.name)) from exc
    except SyntaxError as exc:
        raise syntax_error(exc, label) from exc
    if catcher.started:
        return
    servers = [value for name, value in defined.items() if not name.startswith("_") and server_kind(value)]
    if servers:
        import anyio

        anyio.run(catcher.start, servers[0], settings.transport, {})
        return
    raise Failure(f"{label} ended without starting an MCP server mcprun can serve (FastMCP.run(), "
                  "MCPServer.run(), a low-level Server.run() over stdio_server()); a program that writes the "
                  "protocol itself cannot be served by mcprun")


def start_target(settings: Settings, target: Target, catcher: Catcher) -> Any:
    """Run code that starts its own server, or load the target: return the server or async factory loaded, or
    None when the code started a server (catcher took it). Every stage after resolution starts here."""
    catch_started_servers(catcher)
    if target.kind in SELF_STARTING:
        run_self_starting(settings, target, catcher)
        return None
    sys.argv = [str(target.path or target.spec), *settings.server_args]
    return load_server(settings, target, catcher)


def describe_server(server: Any, target: Target) -> str:
    return f"{getattr(server, 'name', None) or 'server'!r} from {target.spec}"


# -- the server object, 4: the policy, what it offers to whom ----------------
#
# --tools/--exclude-tools/--read-only, --resources/--exclude-resources, --prompts/--exclude-prompts and
# --policy FILE (tools per caller) narrow what any server offers, on every transport: the low-level
# server's list handlers and the handlers that use what they list (its public add_request_handler) are
# wrapped. What is left out is not listed, and asking for it is answered as the server answers a name it
# does not have: the request goes on under a random name no server has, and the name asked for is put
# back in what the server says. A left-out tool is never called and a left-out resource never read.

FLIGHT = "mcprun.flight"  # the scope key of a request's Flight (HTTP, set by the gateway): its caller, scopes
LEFT_OUT: contextvars.ContextVar = contextvars.ContextVar("mcprun_left_out", default=False)  # the policy denied it

# what a server offers: (its list method, the result's field, the item's key field, the method that uses
# one, that method's key parameter, the options whose globs select it)
OFFERINGS = {
    "tools": ("tools/list", "tools", "name", "tools/call", "name", ("tools", "exclude_tools")),
    "prompts": ("prompts/list", "prompts", "name", "prompts/get", "name", ("prompts", "exclude_prompts")),
    "resources": ("resources/list", "resources", "uri", "resources/read", "uri", ("resources", "exclude_resources")),
    "resource_templates": ("resources/templates/list", "resource_templates", "uri_template", None, None,
                           ("resources", "exclude_resources")),
}


def caller_of(context: Any) -> tuple:
    """(name, scopes) of who sent this request, as the gateway saw it; ("", ()) over stdio."""
    flight = (getattr(getattr(context, "request", None), "scope", None) or {}).get(FLIGHT)
    return (flight.caller, flight.scopes) if flight is not None else ("", ())


class Offer:
    """The policy of one server: whether it offers a tool, prompt or resource to the caller of a request."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.callers = CallerPolicy(settings.policy) if settings.policy else None

    def offers(self, kind: str, key: str, context: Any, item: Any = None) -> bool:
        """Whether this item (an item of a list result, when there is one) is offered to the caller."""
        offered, left_out = (getattr(self.settings, option) for option in OFFERINGS[kind][5])
        if offered and not glob_match(key, offered) or glob_match(key, left_out):
            return False
        if kind != "tools":
            return True
        if item is not None and self.settings.read_only and not getattr(item.annotations, "read_only_hint", None):
            return False
        return self.callers is None or self.callers.offers(key, *caller_of(context))


def _put_back(value: Any, stand_in: str, name: str) -> Any:
    """Replace the stand-in by the name asked for, in the texts of a result, an error message or its data."""
    if isinstance(value, str):
        return value.replace(stand_in, name)
    if isinstance(value, dict):
        return {key: _put_back(item, stand_in, name) for key, item in value.items()}
    for item in getattr(value, "content", None) or ():
        if getattr(item, "type", None) == "text":
            item.text = item.text.replace(stand_in, name)
    return value


_NARROWED: dict = {}  # id of a low-level server already wrapped -> its Offer (SIGHUP reads --policy again)


def _listed(offer: Offer, kind: str, listing: Any) -> Any:
    field, key_field = OFFERINGS[kind][1:3]

    async def listed(context, params):
        result = await listing.handler(context, params)
        setattr(result, field, [item for item in getattr(result, field)
                                if offer.offers(kind, str(getattr(item, key_field)), context, item)])
        return result

    return listed


def _used(offer: Offer, kind: str, listing: Any, using: Any) -> Any:
    key_param = OFFERINGS[kind][4]

    async def left_out(context, key: str) -> bool:
        if not offer.offers(kind, key, context):
            return True
        if kind != "tools" or not offer.settings.read_only or listing is None:
            return False
        params, cursor = listing.params_type(), None  # --read-only: the tool's annotations, as listed
        for _ in range(100):  # pages
            result = await listing.handler(context, params.model_copy(update={"cursor": cursor}))
            if any(tool.name == key for tool in result.tools):
                return not any(tool.name == key and offer.offers(kind, key, context, tool) for tool in result.tools)
            if not (cursor := getattr(result, "next_cursor", None)):
                return False
        return False

    async def used(context, params):
        key = str(getattr(params, key_param))
        if not await left_out(context, key):
            return await using.handler(context, params)
        LEFT_OUT.set(True)  # for the audit log, which awaits this in the same context
        stand_in = f"not-offered-{os.urandom(6).hex()}" + (":" if kind == "resources" else "")
        try:
            result = await using.handler(context, params.model_copy(update={key_param: stand_in}))
        except Exception as exc:  # a JSON-RPC error (MCPError: its ErrorData) or any other
            exc.args = tuple(_put_back(arg, stand_in, key) for arg in exc.args)
            error = getattr(exc, "error", None)
            for attribute in ("message", "data"):
                if isinstance(getattr(error, attribute, None), (str, dict)):
                    setattr(error, attribute, _put_back(getattr(error, attribute), stand_in, key))
            raise
        if getattr(result, "is_error", None) is False or kind != "tools":  # a server that answers any name
            from mcp.shared.exceptions import MCPError

            raise MCPError(-32602, f"Unknown {kind[:-1]}: {key}")
        return _put_back(result, stand_in, key)

    return used


def narrow_offer(server: Any, settings: Settings) -> None:
    """Apply the policy to the server's low-level handlers (once per server)."""
    globs = (getattr(settings, option) for offering in OFFERINGS.values() for option in offering[5])
    if not (settings.read_only or settings.policy or any(globs)):
        return
    lowlevel = lowlevel_server_of(server, server_kind(server))
    if id(lowlevel) in _NARROWED:
        return
    offer = _NARROWED[id(lowlevel)] = Offer(settings)
    for kind, (list_method, field, key_field, use_method, key_param, _) in OFFERINGS.items():
        if (listing := lowlevel.get_request_handler(list_method)) is not None:
            lowlevel.add_request_handler(list_method, listing.params_type, _listed(offer, kind, listing))
        if use_method and (using := lowlevel.get_request_handler(use_method)) is not None:
            lowlevel.add_request_handler(use_method, using.params_type, _used(offer, kind, listing, using))


# -- the server object, 5: the audit log ------------------------------------
#
# --audit-log writes one JSON line per MCP operation the server answers: tool calls, resource reads,
# prompt gets (and, with --audit-lists, the lists), on every transport, around the same low-level
# handlers the policy wraps, outside it (so a call the policy denied is logged as denied). Each line is
# one write(2) to a file opened O_APPEND, so workers sharing the file never split or mix lines.

AUDITED = {"tools/call": "name", "resources/read": "uri", "prompts/get": "name"}  # method -> its name parameter
AUDITED_LISTS = ("tools/list", "resources/list", "resources/templates/list", "prompts/list")


class AuditLog:
    """The audit log's file descriptor: appended to by one write per line, reopened on SIGHUP (logrotate)."""

    def __init__(self, path: str) -> None:
        self.path, self.fd = path, -1
        self.reopen()

    def reopen(self) -> None:
        """Open the path (again: after a rename, a new file); raise one UsageError if it cannot be."""
        if self.path == "-":
            self.fd = sys.stderr.fileno()
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise UsageError(f"--audit-log {self.path}: {exc.strerror}") from None
        old, self.fd = self.fd, fd
        if old >= 0:
            os.close(old)

    def write(self, record: dict) -> None:
        data = (json.dumps(record, ensure_ascii=False, default=str, separators=(",", ":")) + "\n").encode()
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError as exc:
            warn_now_and_then("audit", f"--audit-log {self.path}: cannot write ({exc.strerror}); lines are lost")


def utc_time() -> str:
    """Now in UTC, ISO 8601 to the millisecond: 2026-12-02T00:10:00.123Z."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def digest_of(arguments: Any) -> str:
    """SHA-256 of the arguments' canonical JSON (keys sorted, no spaces, UTF-8)."""
    canonical = json.dumps(arguments if arguments is not None else {}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _error_text(value: Any) -> str:
    text = getattr(getattr(value, "error", None), "message", None) or str(value) or type(value).__name__
    return text[:1000]


def audit_record(settings: Settings, method: str, context: Any, params: Any) -> dict:
    """Who asked for what: the fields of an audit line known before the handler runs."""
    request = getattr(context, "request", None)
    headers = getattr(request, "headers", None) or {}
    client = getattr(request, "client", None)
    caller, _ = caller_of(context)
    record = {"time": utc_time(), "method": method, "transport": settings.transport,
              "request_id": getattr(context, "request_id", None),
              "session": headers.get("mcp-session-id") or getattr(request, "query_params", {}).get("session_id"),
              "client": f"{client[0]}:{client[1]}" if client else None, "caller": caller or None}
    if method in AUDITED:
        record["name"] = str(getattr(params, AUDITED[method], ""))
    if method in ("tools/call", "prompts/get"):
        arguments = getattr(params, "arguments", None)
        record["arguments_sha256"] = digest_of(arguments)
        if settings.audit_arguments:
            record["arguments"] = arguments
    return record


def is_tool_error(result: Any) -> bool:
    """Tell whether a tools/call result says the tool failed: is_error on the SDK's model, isError in its dict."""
    return getattr(result, "is_error", False) is True or (isinstance(result, dict) and result.get("isError") is True)


def _audited(settings: Settings, log: AuditLog, method: str, handler: Any) -> Any:
    async def audited(context, params):
        record = audit_record(settings, method, context, params)
        began = time.perf_counter()
        LEFT_OUT.set(False)
        outcome, error_text = "ok", None
        try:
            result = await handler.handler(context, params)
            if is_tool_error(result):
                outcome = "tool_error"
                content = result.get("content") if isinstance(result, dict) else result.content
                error_text = " ".join(item.get("text", "") if isinstance(item, dict) else getattr(item, "text", "")
                                      for item in content or ())[:1000]
            return result
        except BaseException as exc:
            outcome, error_text = "error", _error_text(exc)
            raise
        finally:  # the policy's denial is what the caller got, whatever the stand-in's answer
            record.update(outcome="denied" if LEFT_OUT.get() else outcome, error=error_text,
                          duration_ms=round((time.perf_counter() - began) * 1000, 3))
            log.write(record)

    return audited


_AUDITED: set = set()  # ids of the low-level servers already wrapped


def audit_requests(server: Any, settings: Settings, log: AuditLog) -> None:
    """Log every audited request the server's low-level handlers answer (once per server)."""
    lowlevel = lowlevel_server_of(server, server_kind(server))
    if id(lowlevel) in _AUDITED:
        return
    _AUDITED.add(id(lowlevel))
    for method in (*AUDITED, *(AUDITED_LISTS if settings.audit_lists else ())):
        if (handler := lowlevel.get_request_handler(method)) is not None:
            lowlevel.add_request_handler(method, handler.params_type, _audited(settings, log, method, handler))


# -- the server object, 6: metrics ---------------------------------------------
#
# --metrics serves Prometheus metrics at --metrics-path on the HTTP port, behind the auth token;
# --metrics-listen HOST:PORT on a listener of their own, without auth, on every transport (stdio too).
# prometheus-client is imported only then. Every MCP request is counted by a middleware on the
# low-level server (so stdio and HTTP count alike, initialize and unknown methods too); the gateway
# counts HTTP requests and its refusals. With --workers, each worker writes its numbers to files in a
# folder the supervisor made (prometheus-client's multiprocess mode), and a scrape adds them up.

MCP_METHODS = frozenset((
    "initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/templates/list",
    "resources/read", "resources/subscribe", "resources/unsubscribe", "prompts/list", "prompts/get",
    "completion/complete", "logging/setLevel", "server/discover", "subscriptions/listen"))  # others: "other"
METRICS: Any = None  # this process's Metrics, while it serves with --metrics or --metrics-listen
METRICS_FOLDER: str | None = None  # the multiprocess folder, in a supervisor and its workers


class Metrics:
    """The instruments: what is counted, timed and gauged (docs/observing.md lists them)."""

    def __init__(self) -> None:
        import prometheus_client
        from prometheus_client import Counter, Gauge, Histogram

        prometheus_client.disable_created_metrics()
        live = {"multiprocess_mode": "livesum"}  # with workers: the sum over the workers alive
        self.http_requests = Counter("mcprun_http_requests", "HTTP requests answered, by method, route and status",
                                     ("method", "route", "status"))
        self.http_duration = Histogram("mcprun_http_request_duration_seconds",
                                       "time to answer an HTTP request (event streams not counted)", ("route",))
        self.requests = Counter("mcprun_mcp_requests", "MCP requests answered, by JSON-RPC method and outcome "
                                "(ok, tool_error, error, denied)", ("method", "outcome"))
        self.duration = Histogram("mcprun_mcp_request_duration_seconds", "time to answer an MCP request",
                                  ("method",))
        self.tool_calls = Counter("mcprun_tool_calls", "tool calls, by tool and outcome", ("tool", "outcome"))
        self.tool_duration = Histogram("mcprun_tool_call_duration_seconds", "time a tool call took", ("tool",))
        self.in_flight = Gauge("mcprun_mcp_requests_in_flight", "MCP requests being answered", **live)
        self.sessions = Gauge("mcprun_sessions_open", "streamable HTTP sessions (SSE: event streams) open", **live)
        self.streams = Gauge("mcprun_event_streams_open", "GET event streams open", **live)
        self.auth_failures = Counter("mcprun_auth_failures", "requests refused for their credentials, by status "
                                     "and OAuth error", ("status", "error"))
        self.limited = Counter("mcprun_rate_limited", "requests refused by a limit: rate_limit, auth_failures, "
                               "sessions, large_bodies", ("limit",))
        self.drains = Counter("mcprun_drains", "graceful drains begun (SIGTERM, a worker replaced)")
        self.draining = Gauge("mcprun_draining", "processes draining", **live)
        self.tools: set = set()  # the tool names counted by name, at most TOOL_LABELS

    def tool_label(self, name: Any) -> str:
        name = str(name)
        if name not in self.tools and len(self.tools) < TOOL_LABELS:
            self.tools.add(name)
        return name if name in self.tools else "_other"


class MeteredRequests:
    """Server middleware: count and time every MCP request by method and outcome, tool calls by tool too.
    A call the policy denied (LEFT_OUT) is 'denied', whatever the server answered its stand-in."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        if ctx.request_id is None:  # a notification
            return await call_next(ctx)
        metrics, method = self.metrics, ctx.method if ctx.method in MCP_METHODS else "other"
        LEFT_OUT.set(False)
        outcome, began = "error", time.perf_counter()
        metrics.in_flight.inc()
        try:
            result = await call_next(ctx)
            outcome = "tool_error" if method == "tools/call" and is_tool_error(result) else "ok"
            return result
        finally:
            took = time.perf_counter() - began
            outcome = "denied" if LEFT_OUT.get() else outcome
            metrics.in_flight.dec()
            metrics.requests.labels(method, outcome).inc()
            metrics.duration.labels(method).observe(took)
            if method == "tools/call":
                tool = metrics.tool_label(ctx.params.get("name") if isinstance(ctx.params, dict) else None)
                metrics.tool_calls.labels(tool, outcome).inc()
                metrics.tool_duration.labels(tool).observe(took)


_METERED: set = set()  # ids of the low-level servers already metered


def meter_requests(server: Any, metrics: Metrics) -> None:
    """Count every request the server's low-level server answers (once per server)."""
    lowlevel = lowlevel_server_of(server, server_kind(server))
    if id(lowlevel) not in _METERED:
        _METERED.add(id(lowlevel))
        add_server_middleware(lowlevel, MeteredRequests(metrics))


class WorkerProcesses:
    """A collector: prometheus-client's process metrics (CPU, memory, open files ...) of each worker alive,
    labelled by its pid (a worker's live gauges have a file in the folder until it is marked dead)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def collect(self) -> Any:
        from prometheus_client import ProcessCollector
        from prometheus_client.metrics_core import Metric

        families: dict = {}
        for path in sorted(Path(self.folder).glob("gauge_livesum_*.db")):
            pid = int(path.stem.rpartition("_")[2])
            for family in ProcessCollector(pid=lambda pid=pid: pid, registry=None).collect():
                merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "pid": str(pid)}, sample.value)
        return iter(families.values())


def metrics_registry() -> Any:
    """What a scrape reads: this process's registry (with its process, platform and gc metrics, and any
    the server's own code registers); with workers, the folder's sums and each worker's process metrics."""
    import prometheus_client

    if METRICS_FOLDER is None:
        return prometheus_client.REGISTRY
    from prometheus_client import multiprocess

    registry = prometheus_client.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=METRICS_FOLDER)
    registry.register(WorkerProcesses(METRICS_FOLDER))
    return registry


def start_metrics(server: Any, settings: Settings) -> None:
    """In the process that serves: make the instruments and count the server's requests; without workers,
    also open the --metrics-listen listener (with workers, the supervisor has)."""
    global METRICS

    if METRICS is None and (settings.metrics or settings.metrics_listen):
        METRICS = Metrics()
    if METRICS is not None:
        meter_requests(server, METRICS)
        if settings.metrics_listen and METRICS_FOLDER is None:
            listen_for_scrapes(settings.metrics_listen)


_LISTENING: list = []  # the --metrics-listen server, once open


def listen_for_scrapes(address: str) -> None:
    """Serve the metrics on their own listener (prometheus-client's, in a thread), and say where."""
    from prometheus_client import start_http_server

    if _LISTENING:
        return
    host, port = split_listen_address(address)
    try:
        listener, _ = start_http_server(port, host, metrics_registry())
    except OSError as exc:
        raise Failure(f"--metrics-listen {address}: {exc.strerror or exc}") from None
    _LISTENING.append(listener)
    shown = f"[{host}]" if ":" in host else host
    info(f"metrics on http://{shown}:{listener.server_port}/metrics")


class ScrapeRoute:
    """Answer the --metrics-path route (through the auth token's check, when there is one) with the
    metrics; pass every other request on."""

    def __init__(self, app: Any, settings: Settings, guard: Any) -> None:
        self.app, self.path = app, settings.metrics_path
        self.scrape = guard(self.exposition) if guard else self.exposition

    async def __call__(self, scope, receive, send):
        if scope["path"] != self.path:
            return await self.app(scope, receive, send)
        if scope["method"] not in ("GET", "HEAD"):
            return await send_json(send, 405, {"error": "method not allowed"}, headers=((b"allow", b"GET, HEAD"),))
        await self.scrape(scope, receive, send)

    @staticmethod
    async def exposition(scope, receive, send):
        import anyio
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = await anyio.to_thread.run_sync(generate_latest, metrics_registry())  # with workers: reads files
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode()),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body if scope["method"] == "GET" else b""})


class MeteredHttp:
    """Count and time every HTTP request by method, route and status (the outermost piece of the gateway)."""

    def __init__(self, app: Any, settings: Settings, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics
        self.routes = {settings.http_path: "mcp", settings.health_path: "health", settings.ready_path: "ready",
                       settings.metrics_path: "metrics",
                       "/messages/": "mcp" if settings.transport == "sse" else "other"}

    async def __call__(self, scope, receive, send):
        status, began = 0, time.perf_counter()
        route = self.routes.get(scope["path"]) or ("metadata" if scope["path"].startswith("/.well-known/")
                                                   else "other")

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            method = scope["method"] if scope["method"] in ("GET", "POST", "DELETE", "HEAD", "OPTIONS") else "other"
            self.metrics.http_requests.labels(method, route, str(status or 499)).inc()
            if not (route == "mcp" and method == "GET"):  # an event stream lasts as long as it is open
                self.metrics.http_duration.labels(route).observe(time.perf_counter() - began)


# -- the server object, 7: traces --------------------------------------------
#
# --otlp-endpoint (or OpenTelemetry's OTEL_EXPORTER_OTLP_*ENDPOINT) exports the spans the server's stack
# already makes (fastmcp's, the SDK's) and, over HTTP, one gateway span per request (Traced), over OTLP/HTTP
# with the OpenTelemetry SDK, which mcprun does not carry: it is imported, from a --pythonpath folder, only
# then. The SDK handles a streamable-HTTP request in a task of its own, where the gateway's context does not
# flow: Traced leaves the span's context in the request's scope, and a middleware first in the low-level
# server's chain (its public Server.middleware) makes it current, so the server's spans are its children.

TRACE = "mcprun.trace"  # the scope key of a request's GatewaySpan
TRACED_BODY = 1024 * 1024  # bytes of a request body looked into for a _meta traceparent


def otlp_traces_url(settings: Settings, environ: dict) -> tuple[str, str]:
    """Where spans are posted, and what said so: --otlp-endpoint (OTLP's /v1/traces added to a URL without a
    path), else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (as it is), else OTEL_EXPORTER_OTLP_ENDPOINT (/v1/traces
    added, as OpenTelemetry's exporters do)."""
    if endpoint := settings.otlp_endpoint:
        bare = urllib.parse.urlsplit(endpoint).path in ("", "/")
        return (endpoint.rstrip("/") + "/v1/traces" if bare else endpoint), "--otlp-endpoint"
    if endpoint := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return endpoint, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    return environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces", "OTEL_EXPORTER_OTLP_ENDPOINT"


def _gateway_parent(ctx: Any) -> Any:
    """The gateway span's context of the HTTP request that carried this message, or None (stdio)."""
    return getattr((getattr(getattr(ctx, "request", None), "scope", None) or {}).get(TRACE), "context", None)


class GatewayParent:
    """A low-level server middleware: run each message in its HTTP request's gateway span."""

    async def __call__(self, ctx: Any, call_next: Any) -> Any:
        from opentelemetry import context

        if (parent := _gateway_parent(ctx)) is None:
            return await call_next(ctx)
        token = context.attach(parent)
        try:
            return await call_next(ctx)
        finally:
            context.detach(token)


def start_tracing(server: Any, settings: Settings) -> Any:
    """Set up the OpenTelemetry SDK to export spans over OTLP/HTTP; return its TracerProvider (to shut down)."""
    url, named = otlp_traces_url(settings, os.environ)
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        logging.getLogger("mcprun").debug("importing the OpenTelemetry SDK: %s", exc)
        version = _version_of("opentelemetry-api")
        raise UsageError(f"{named} needs the OpenTelemetry SDK and its OTLP exporter: make a folder with "
                         f"'mcprun vendor opentelemetry-sdk=={version} opentelemetry-exporter-otlp-proto-http=="
                         f"{version} -o FOLDER' and add --pythonpath FOLDER") from None
    lowlevel = lowlevel_server_of(server, server_kind(server))
    resource = Resource.create()  # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": getattr(lowlevel, "name", None) or "mcprun"}))
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))  # it reads the headers etc.
    trace.set_tracer_provider(provider)
    add_server_middleware(lowlevel, GatewayParent())  # outermost: the server's own span starts inside it
    info(f"traces: exporting spans over OTLP/HTTP to {url} as service {resource.attributes['service.name']!r}")
    return provider


def _meta_carrier(body: bytes) -> dict:
    """The traceparent and tracestate in the _meta of a JSON-RPC body's first message (MCP's own way)."""
    if b"traceparent" not in body:
        return {}
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    first = (parsed or [None])[0] if isinstance(parsed, list) else parsed
    params = first.get("params") if isinstance(first, dict) else None
    meta = params.get("_meta") if isinstance(params, dict) else None
    return {key: str(meta[key]) for key in ("traceparent", "tracestate") if key in meta} \
        if isinstance(meta, dict) else {}


class GatewaySpan:
    """The gateway's span of one HTTP request, begun once its parent is known: the client's traceparent
    header, else the _meta traceparent of the body's first message (read on its way to the server), else
    none (a new trace). Its context is what GatewayParent makes current for the server's spans."""

    def __init__(self, tracer: Any, scope: dict, route: str | None) -> None:
        self.tracer, self.scope, self.route = tracer, scope, route
        self.carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
                        if name in (b"traceparent", b"tracestate")}
        self.body = None if self.carrier else bytearray()  # looked into only without the header
        self.began, self.span, self.context, self.status = time.time_ns(), None, None, 0

    def received(self, message: dict) -> None:
        """Note a message of the request on its way to the server; begin once the body is complete."""
        if self.span is None and message["type"] == "http.request":
            if self.body is not None and len(self.body) <= TRACED_BODY:
                self.body.extend(message.get("body", b""))
            if not message.get("more_body"):
                self.begin()

    def begin(self) -> None:
        from opentelemetry import propagate, trace
        from opentelemetry.trace import SpanKind

        if self.span is not None:
            return
        scope, client = self.scope, self.scope.get("client")
        carrier = self.carrier or _meta_carrier(bytes(self.body or b""))
        attributes = {"http.request.method": scope["method"], "url.path": scope["path"],
                      **({"http.route": self.route} if self.route else {}),
                      **({"client.address": client[0]} if client else {})}
        self.span = self.tracer.start_span(f"{scope['method']} {self.route}" if self.route else scope["method"],
                                           context=propagate.extract(carrier), kind=SpanKind.SERVER,
                                           attributes=attributes, start_time=self.began)
        self.context = trace.set_span_in_context(self.span)

    def end(self) -> None:
        """End the span with what the request came to: status, and the methods, tool and caller on its Flight."""
        from opentelemetry.trace import StatusCode

        self.begin()
        flight = self.scope.get(FLIGHT)
        noted = {"mcp.method.name": flight and flight.rpc, "gen_ai.tool.name": flight and flight.tool,
                 "enduser.id": flight and flight.caller}
        self.span.set_attributes({"http.response.status_code": self.status or 499,
                                  **{key: value for key, value in noted.items() if value}})
        if self.status >= 500 or not self.status:
            self.span.set_status(StatusCode.ERROR)
        self.span.end()


class Traced:
    """One SERVER span for each HTTP request (a GatewaySpan, under scope[TRACE]): route, status, the JSON-RPC
    methods, tool and caller, in the client's trace."""

    def __init__(self, app: Any, settings: Settings) -> None:
        from opentelemetry import trace

        self.app, self.tracer = app, trace.get_tracer("mcprun", __version__)
        self.routes = (settings.http_path, "/messages/")  # streamable HTTP's or SSE's, and SSE's posts

    async def __call__(self, scope, receive, send):
        request = scope[TRACE] = GatewaySpan(self.tracer, scope, scope["path"] if scope["path"] in self.routes
                                             else None)

        async def receive_and_look():
            message = await receive()
            request.received(message)
            return message

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                request.begin()
                request.status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive_and_look, send_and_note)
        finally:
            request.end()


# -- transports: stdio, the listening socket, systemd ------------------------


async def serve_stdio(server: Any, settings: Settings, wire: Wire) -> None:
    """Serve over the wire that take_wire() kept: every stdio_server() mcprun drives reads and writes it."""
    token = _driving.set(dataclasses.replace(wire, grace=settings.graceful_timeout))
    try:
        kind = server_kind(server)
        if kind == "fastmcp":
            # no log_level: fastmcp would reinstall its own handler; configure_logging() set the level
            await server.run_stdio_async(show_banner=False, stateless=settings.stateless)
        elif kind == "sdk":
            from mcp.server.mcpserver import MCPServer

            await MCPServer.run_stdio_async(server)  # not an mcp 1.x FastMCP's own, which would come back here
        else:
            from mcp.server.stdio import stdio_server

            async with stdio_server(*wire.streams()) as (read_stream, write_stream):
                await server.run(read_stream, write_stream, server.create_initialization_options())
    finally:
        _driving.reset(token)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind and listen on host:port (port 0 picks a free one); Failure if that fails."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"cannot bind to host {host!r}: {exc.strerror}; use an address such as 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == 98 or "in use" in str(exc):
            raise Failure(f"port {port} on {host} is in use; choose another with --port, "
                          "or --port 0 for a free one") from None
        raise Failure(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def public_url(sock: socket.socket, settings: Settings) -> str:
    """Return a URL a client on this machine can use, IPv6 in brackets."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if settings.tls_cert else 'http'}://{shown}:{port}{settings.http_path}"


def ready_message(description: str, settings: Settings, sock: socket.socket, notes: tuple = ()) -> str:
    """Return the one ready line: what is served, over what, and a URL a client here can use."""
    kind = "SSE" if settings.transport == "sse" else "streamable HTTP"
    if sock.getsockname()[0] in ("0.0.0.0", "::"):
        notes = (*notes, "all interfaces")
    return f"ready: serving {description} over {kind} at {public_url(sock, settings)}" + (
        f" ({', '.join(notes)})" if notes else "")


def systemd_socket() -> socket.socket | None:
    """Take the listening socket systemd passes on fd 3 (socket activation), or return None.

    systemd sets LISTEN_PID to the process it started, LISTEN_FDS to the number of sockets. The
    variables are removed either way, so the server's own subprocesses don't take the socket too.
    """
    pid, count = os.environ.get("LISTEN_PID", ""), os.environ.get("LISTEN_FDS", "")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if not (pid.isdigit() and int(pid) == os.getpid() and count.isdigit() and int(count) >= 1):
        return None
    if int(count) > 1:
        warn(f"systemd passed {count} sockets (LISTEN_FDS); serving on the first, fd {SD_LISTEN_FDS_START}")
    try:
        sock = socket.socket(fileno=SD_LISTEN_FDS_START)
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as exc:
        raise Failure(f"LISTEN_FDS={count}, but fd {SD_LISTEN_FDS_START} is no socket ({exc.strerror or exc}); "
                      "start mcprun from a systemd .socket unit, or unset LISTEN_FDS") from None
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()
        raise Failure(f"systemd passed a socket mcprun cannot serve HTTP on (fd {SD_LISTEN_FDS_START}): use "
                      "ListenStream=PORT or ListenStream=ADDRESS:PORT in the .socket unit")
    sock.set_inheritable(False)
    return sock


def sd_notify(state: str) -> None:
    """Tell systemd the service's state (READY=1, STOPPING=1, ...) when it asked (NOTIFY_SOCKET); never fails."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket name
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        logging.getLogger("mcprun").debug("sd_notify %r to %s failed: %s", state, address, exc)


def announcer(settings: Settings, sock: socket.socket, notes: tuple = ()) -> Any:
    """Return what serve_http calls once the server is ready: log the ready line, tell systemd."""
    def announce(description: str) -> None:
        info(ready_message(description, settings, sock, notes))
        sd_notify(f"READY=1\nMAINPID={os.getpid()}")

    return announce


# -- transports: HTTP, the server's app behind mcprun's gateway --------------


def server_has_own_auth(server: Any) -> bool:
    """Return True when the server configures authentication itself (fastmcp auth=, SDK auth settings)."""
    if server_kind(server) == "fastmcp":
        return getattr(server, "auth", None) is not None
    return getattr(getattr(server, "settings", None), "auth", None) is not None


def lowlevel_sse_app(server: Any, path: str, security: Any, max_body: int) -> Any:
    """Return an SSE app for a low-level Server (MCPServer.sse_app's routes, which it lacks)."""
    from mcp.server.sse import SseServerTransport
    from starlette.applications import Starlette
    from starlette.routing import Mount, Route

    transport = SseServerTransport("/messages/", security_settings=security, max_request_body_size=max_body)

    class SseEndpoint:  # a class instance, so Starlette hands it the raw ASGI call
        async def __call__(self, scope, receive, send):
            async with transport.connect_sse(scope, receive, send) as (read_stream, write_stream):
                await server.run(read_stream, write_stream, server.create_initialization_options())

    return Starlette(routes=[Route(path, endpoint=SseEndpoint(), methods=["GET"]),
                             Mount("/messages/", app=transport.handle_post_message)])


def build_http_app(server: Any, settings: Settings) -> Any:
    """Return the server's own ASGI app for streamable HTTP or SSE, its Host/Origin guard off (mcprun's is on)."""
    from mcp.server.transport_security import TransportSecuritySettings

    sse = settings.transport == "sse"
    if not sse and not settings.json_response:
        answer_json_unless_streamed(STREAM_AFTER)
    if server_kind(server) == "fastmcp":
        sessions = {} if sse else {"session_idle_timeout": settings.session_idle_timeout}
        if not sse:
            sessions["json_response"] = settings.json_response
        return server.http_app(path=settings.http_path, transport="sse" if sse else "http",
                               stateless_http=settings.stateless or None, host_origin_protection=False, **sessions)
    unguarded = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    if sse and server_kind(server) == "lowlevel":
        return lowlevel_sse_app(server, settings.http_path, unguarded, settings.max_body)
    if sse:
        return server.sse_app(sse_path=settings.http_path, transport_security=unguarded,
                              max_request_body_size=settings.max_body)
    return server.streamable_http_app(streamable_http_path=settings.http_path, stateless_http=settings.stateless,
                                      transport_security=unguarded, max_request_body_size=settings.max_body,
                                      session_idle_timeout=settings.session_idle_timeout,
                                      max_sessions=settings.max_sessions, json_response=settings.json_response)


def read_auth_tokens(settings: Settings) -> dict:
    """Return the bearer tokens clients must present, each with the name of its caller, from --auth-token(-file)
    / MCPRUN_AUTH_TOKEN(_FILE): a file's lines are TOKEN (named token-LINE) or NAME TOKEN."""
    if settings.auth_token is not None:
        where = f"the auth token ({settings.sources['auth_token']})"
        lines = [(1, "token", settings.auth_token.strip())] if settings.auth_token.strip() else []
    elif settings.auth_token_file is not None:
        where = f"--auth-token-file {settings.auth_token_file}"
        try:
            text = Path(settings.auth_token_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{where}: {getattr(exc, 'strerror', None) or _first_line(exc)}") from None
        lines = []
        for number, line in enumerate(text.splitlines(), 1):
            words = line.split()
            if not words or words[0].startswith("#"):
                continue
            if len(words) > 2:
                raise UsageError(f"{where}, line {number}: expected TOKEN or NAME TOKEN")
            lines.append((number, words[0] if len(words) == 2 else f"token-{number}", words[-1]))
    else:
        return {}
    if not lines:
        raise UsageError(f"{where} is empty; give a long random token (e.g. from 'openssl rand -hex 32')")
    tokens: dict = {}
    for number, name, token in lines:
        if not re.fullmatch(r"[A-Za-z0-9._~+/-]+=*", token):
            raise UsageError(f"{where}: a token may hold only letters, digits and -._~+/= (RFC 6750), no spaces")
        if not re.fullmatch(r"[\w.@:-]{1,64}", name):
            raise UsageError(f"{where}, line {number}: a name may hold only letters, digits and ._@:- (64 at most)")
        if name in tokens.values() or token in tokens:
            raise UsageError(f"{where}, line {number}: the {'token' if token in tokens else 'name'} "
                             "appears twice; give each caller its own")
        tokens[token] = name
        if len(token) < SHORT_TOKEN:
            warn(f"{where}: a token of {len(token)} characters ({name}) is easy to guess; use {SHORT_TOKEN} or "
                 "more, e.g. from 'openssl rand -hex 32'")
    return tokens


class Refused(Exception):
    """A bearer credential the gateway does not accept: the status, OAuth error code and description to answer."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


class JwtVerifier:
    """Check OAuth 2.1 access tokens as a resource server: a JWT signed by a key of the JWKS (a file, or the
    authorization server's URL, fetched again for a key it lacks at most every JWKS_REFETCH seconds, its
    failures never dropping the keys it has), naming the issuer, for this resource, current, with the scopes.

    joserfc (the bundle's JOSE library, also fastmcp's) does the cryptography and the claims."""

    def __init__(self, settings: Settings) -> None:
        from joserfc.jws import JWSRegistry

        self.source, self.issuer, self.scopes = settings.auth_jwks, settings.auth_issuer, settings.auth_scopes
        self.audiences = list(dict.fromkeys((settings.auth_resource, *settings.auth_audiences)))
        self.registry = JWSRegistry(algorithms=list(JWT_ALGORITHMS), strict_check_header=False)
        self.fetched_at = float("-inf")  # when a token's unknown key last made it fetch the URL
        self.fetching = None  # SIGHUP's fetch of the URL (an asyncio task), while it runs
        self.keys = self.read()

    @property
    def remote(self) -> bool:
        return _is_url(self.source)

    def read(self) -> Any:
        """Read the key set now, from the file or the URL (at start and on SIGHUP); raise one Error if it fails."""
        return self.parse(self._read_bytes(), self.source)

    def _read_bytes(self) -> bytes:
        if not self.remote:
            try:
                return Path(self.source).read_bytes()
            except OSError as exc:
                raise UsageError(f"--auth-jwks {self.source}: {exc.strerror}") from None
        import httpx

        try:
            response = httpx.get(self.source, timeout=10, follow_redirects=True)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise Failure(f"--auth-jwks {self.source}: cannot fetch the keys ({_first_line(exc)}); check the URL "
                          "(the authorization server's jwks_uri), or give the JWKS as a file") from None
        return response.content

    @staticmethod
    def parse(data: bytes, source: str) -> Any:
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet

        try:
            return KeySet.import_key_set(json.loads(data))
        except (ValueError, TypeError, KeyError, JoseError) as exc:
            raise UsageError(f"--auth-jwks {source}: not a JWKS with a usable public key "
                             f"({_first_line(exc)})") from None

    async def fetch(self) -> bool:
        """Fetch the JWKS URL again, without blocking the event loop; True if it has new keys. On a fault it
        keeps the keys it has, and says so now and then."""
        import httpx

        try:
            async with httpx.AsyncClient(timeout=10, follow_redirects=True) as client:
                response = await client.get(self.source)
                response.raise_for_status()
            self.keys = self.parse(response.content, self.source)
        except (httpx.HTTPError, Error) as exc:
            warn_now_and_then("jwks", f"--auth-jwks {self.source}: cannot fetch the keys again ({_first_line(exc)}); "
                              "tokens signed with the keys fetched before are still accepted")
            return False
        return True

    async def refetch(self) -> bool:
        """Fetch the JWKS URL again for a key it lacks (not more often than every JWKS_REFETCH seconds); True if
        it has new keys."""
        if not self.remote or time.monotonic() - self.fetched_at < JWKS_REFETCH:
            return False
        self.fetched_at = time.monotonic()
        return await self.fetch()

    async def verify(self, token: str) -> tuple:
        """Return the caller a valid access token names (sub, else client_id) and its scopes; else raise Refused."""
        from joserfc import jwt
        from joserfc.errors import ExpiredTokenError, InvalidKeyIdError, JoseError

        for attempt in (1, 2):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # joserfc's SecurityWarning on EdDSA, RFC 9864's rename
                    decoded = jwt.decode(token, self.keys, algorithms=list(JWT_ALGORITHMS), registry=self.registry)
                break
            except InvalidKeyIdError:
                if attempt == 2 or not await self.refetch():
                    raise Refused(401, "invalid_token", "the token is signed with a key this server does not know")
            except (JoseError, ValueError, TypeError):
                raise Refused(401, "invalid_token", "the token is not a valid signed JWT") from None
        claims = decoded.claims
        registry = jwt.JWTClaimsRegistry(leeway=JWT_LEEWAY, iss={"essential": True, "value": self.issuer},
                                         aud={"essential": True, "values": self.audiences}, exp={"essential": True})
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise Refused(401, "invalid_token", "the token has expired") from None
        except JoseError as exc:
            claim = getattr(exc, "claim", None) or "a claim"
            raise Refused(401, "invalid_token", f"the token's {claim} is not what this server accepts") from None
        granted = claims.get("scope") if "scope" in claims else claims.get("scp")  # scp: Entra ID's, a string or list
        granted = granted.split() if isinstance(granted, str) else granted if isinstance(granted, list) else []
        if missing := [scope for scope in self.scopes if scope not in granted]:
            raise Refused(403, "insufficient_scope", f"the token lacks the scope {' '.join(missing)}")
        return str(claims.get("sub") or claims.get("client_id") or "jwt")[:64], tuple(map(str, granted))


def resource_metadata_path(settings: Settings) -> str:
    """RFC 9728's well-known route for this server: the resource URL's path after the well-known prefix."""
    path = urllib.parse.urlsplit(settings.auth_resource).path.rstrip("/")
    return "/.well-known/oauth-protected-resource" + path


def resource_metadata(settings: Settings) -> dict:
    """The RFC 9728 protected-resource metadata: who issues this server's tokens, and which scopes it wants."""
    return {"resource": settings.auth_resource, "authorization_servers": [settings.auth_issuer],
            "scopes_supported": list(settings.auth_scopes), "bearer_methods_supported": ["header"]}


class TLS:
    """The listener's certificate and key (and, for mutual TLS, the client CAs) in one ssl.SSLContext,
    loaded again on SIGHUP: connections open keep theirs, new ones get the new certificate."""

    def __init__(self, settings: Settings) -> None:
        import ssl

        self.settings = settings
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.set_alpn_protocols(["http/1.1"])
        if settings.tls_client_ca:
            try:
                self.context.load_verify_locations(settings.tls_client_ca)
            except (OSError, ssl.SSLError) as exc:
                raise UsageError(f"--tls-client-ca {settings.tls_client_ca}: "
                                 f"{getattr(exc, 'strerror', None) or 'not a PEM certificate'}") from None
            self.context.verify_mode = ssl.CERT_REQUIRED
        self.load(self.context)
        key_mode = os.stat(settings.tls_key).st_mode
        if key_mode & 0o077:
            warn(f"--tls-key {settings.tls_key} can be read by other users (mode {key_mode & 0o777:o}): "
                 f"chmod 600 {settings.tls_key}")

    def load(self, context: Any) -> None:
        """Load the certificate and key into context, or raise one UsageError saying what is wrong."""
        import ssl

        settings, password = self.settings, None
        if settings.tls_key_password_file:
            try:
                password = Path(settings.tls_key_password_file).read_text(encoding="utf-8").splitlines()[0]
            except (OSError, UnicodeDecodeError, IndexError) as exc:
                raise UsageError(f"--tls-key-password-file {settings.tls_key_password_file}: "
                                 f"{getattr(exc, 'strerror', None) or 'empty'}") from None
        asked = []

        def ask() -> str:  # called by OpenSSL for an encrypted key only; without it, OpenSSL asks the terminal
            asked.append(True)
            if password is None:
                raise ValueError("encrypted")
            return password

        for option, path in (("--tls-cert", settings.tls_cert), ("--tls-key", settings.tls_key)):
            if not os.access(path, os.R_OK):
                raise UsageError(f"{option} {path}: {os.strerror(errno.EACCES if os.path.exists(path) else errno.ENOENT)}")
        try:
            context.load_cert_chain(settings.tls_cert, settings.tls_key, ask)
        except ValueError:
            raise UsageError(f"--tls-key {settings.tls_key} is encrypted: give its password with "
                             "--tls-key-password-file FILE") from None
        except ssl.SSLError as exc:
            if exc.reason in ("KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"):  # (a key of another type)
                problem = f"--tls-key {settings.tls_key} is not the key of --tls-cert {settings.tls_cert}"
            elif asked:
                problem = f"--tls-key {settings.tls_key}: wrong password (--tls-key-password-file)"
            else:
                problem = (f"--tls-cert {settings.tls_cert} and --tls-key {settings.tls_key} must be a PEM "
                           "certificate and its PEM private key")
            raise UsageError(problem) from None

    def reload(self) -> None:
        """Load the files again: into a scratch context first, so that a bad pair leaves the served one intact."""
        import ssl

        self.load(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        self.load(self.context)


def is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def send_json(send: Any, status: int, payload: Any, headers: tuple = ()) -> None:
    """Send a whole JSON response through an ASGI send callable."""
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


@dataclasses.dataclass(eq=False)
class Flight:
    """One HTTP request in progress, as the gateway sees it."""

    stream: bool  # a long-lived GET event stream
    session: str | None
    cancel: Any  # the anyio.CancelScope the request runs in
    request_ids: tuple = ()  # JSON-RPC ids in the body, as JSON text
    rpc: str = ""  # JSON-RPC method(s), for the access log
    caller: str = ""  # who sent it: the name of its token, its JWT's subject, or its client certificate's
    scopes: tuple = ()  # its JWT's scopes
    tool: str = ""
    status: int = 0
    late: bool = False  # it began after the drain had
    event_stream: bool = False  # the response is text/event-stream
    finished: bool = False  # the response body is complete
    disconnected: bool = False  # the client went away


class Buckets:
    """Token buckets, one per key (a caller, a client address): rate a second, up to burst at once; the
    RATE_KEYS keys seen last are kept."""

    def __init__(self, rate: float, burst: int) -> None:
        import collections

        self.rate, self.burst = rate, burst
        self.buckets: collections.OrderedDict = collections.OrderedDict()  # key -> (tokens, when)

    def take(self, key: str, now: float) -> float:
        """Take one token for key; return 0 if there was one, else the seconds until there is."""
        tokens, when = self.buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
        self.buckets[key] = (tokens - 1 if not wait else tokens, now)
        while len(self.buckets) > RATE_KEYS:
            self.buckets.popitem(last=False)
        return wait


async def too_many(send: Any, wait: float, message: str) -> None:
    """Answer 429 with Retry-After and a JSON-RPC error saying why."""
    seconds = max(1, math.ceil(wait))
    await send_json(send, 429, {"jsonrpc": "2.0", "id": None, "error": {
        "code": -32000, "message": f"{message}; retry after {seconds} s"}}, headers=((b"retry-after", str(seconds).encode()),))


class RateLimit:
    """Let each caller (named on the request's Flight by BearerAuth; else its client address) make --rate-limit
    requests, answering the rest 429 (Buckets)."""

    def __init__(self, app: Any, rate: Rate) -> None:
        self.app, self.buckets = app, Buckets(rate.per_second, rate.burst)

    async def __call__(self, scope, receive, send):
        import anyio

        flight = scope.get(FLIGHT)
        key = f"caller {flight.caller}" if flight is not None and flight.caller else \
            f"address {(scope.get('client') or ('-',))[0]}"
        if wait := self.buckets.take(key, anyio.current_time()):
            if METRICS:
                METRICS.limited.labels("rate_limit").inc()
            return await too_many(send, wait, "too many requests (--rate-limit)")
        await self.app(scope, receive, send)


class BearerAuth:
    """ASGI middleware: let a request through only with 'Authorization: Bearer <one of the tokens>', and
    note its caller's name on the request's Flight."""

    def __init__(self, app: Any, tokens: dict, verifier: JwtVerifier | None = None, metadata_url: str = "") -> None:
        self.app, self.verifier, self.metadata_url = app, verifier, metadata_url
        self.failures = Buckets(*AUTH_FAILURES)  # per client address: wrong credentials past it get 429
        self.tokens = {}
        self.replace(tokens)

    def replace(self, tokens: dict) -> None:
        """Take these tokens from now on (SIGHUP)."""
        held = {token.encode(): name for token, name in tokens.items()}
        self.tokens.clear()  # in place: the copies guarding() made hold the same dict
        self.tokens.update(held)

    def guarding(self, app: Any) -> "BearerAuth":
        """The same check (the same tokens, keys and failure counts) in front of another app."""
        import copy

        guard = copy.copy(self)
        guard.app = app
        return guard

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        query = urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1"))
        if any(name == "access_token" or value.encode() in self.tokens for name, value in query):
            return await self.refuse(send, 400, "invalid_request",
                                     "send the token in the Authorization header, never in the URL")
        presented = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                presented = value
        scheme, _, credentials = presented.partition(b" ")
        credentials, caller, scopes = credentials.strip(), None, ()
        for token, name in self.tokens.items():  # every token compared, in constant time
            if hmac.compare_digest(credentials, token):
                caller = name
        if scheme.lower() != b"bearer" or not credentials:
            return await self.refuse(send, 401, "invalid_token" if presented else None,
                                     "a valid bearer token is required", scope)
        if caller is None and self.verifier and credentials.count(b".") == 2:
            try:
                caller, scopes = await self.verifier.verify(credentials.decode("ascii", "replace"))
            except Refused as refused:
                return await self.refuse(send, refused.status, refused.error, refused.description, scope)
        if caller is None:
            return await self.refuse(send, 401, "invalid_token", "a valid bearer token is required", scope)
        if (flight := scope.get(FLIGHT)) is not None:
            flight.caller, flight.scopes = caller, scopes
        await self.app(scope, receive, send)

    async def refuse(self, send: Any, status: int, error: str | None, description: str, scope: dict | None = None) -> None:
        """Answer a request without valid credentials; past AUTH_FAILURES from its address, with 429."""
        import anyio

        if scope is not None and error == "invalid_token":
            if wait := self.failures.take((scope.get("client") or ("-",))[0], anyio.current_time()):
                warn_now_and_then("auth-failures", f"{(scope.get('client') or ('-',))[0]} keeps sending wrong "
                                  "credentials: answered 429 for a while")
                if METRICS:
                    METRICS.limited.labels("auth_failures").inc()
                return await too_many(send, wait, "too many failed authentications from this address")
        if METRICS:
            METRICS.auth_failures.labels(str(status), error or "none").inc()
        challenge = 'Bearer realm="mcp"' + (f', error="{error}"' if error else "")
        if error == "insufficient_scope":
            challenge += f', scope="{" ".join(self.verifier.scopes)}"'
        if self.metadata_url:
            challenge += f', resource_metadata="{self.metadata_url}"'
        await send_json(send, status, {"error": error or "unauthorized", "error_description": description},
                        headers=((b"www-authenticate", challenge.encode()),))


class JsonOnly:
    """ASGI middleware: answer a POST of anything but JSON to the MCP endpoint with 415, on every transport
    (the SDK says 400 or 415 depending on the transport)."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.paths = {"/messages/", "/messages"} if settings.transport == "sse" else {settings.http_path}

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            media_type = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
            if media_type != b"application/json":
                return await send_json(send, 415, {"jsonrpc": "2.0", "id": None, "error": {
                    "code": -32600, "message": "Unsupported Media Type: Content-Type must be application/json"}})
        await self.app(scope, receive, send)


RETIRING = threading.Event()  # set in a worker the supervisor replaces: others serve the socket on
_SSE_RESPONSE = re.compile(rb'^data: \{"jsonrpc":"2\.0","id":("(?:[^"\\]|\\.)*"|-?\d+),"(?:result|error)"', re.M)
_SSE_SESSION = re.compile(rb"^data: \S*[?&]session_id=([0-9a-fA-F-]+)", re.M)
INSPECTED_BODY = 1024 * 1024  # bytes of a request body the access log and drain look into
LARGE_BODY = 1024 * 1024  # a request body over this many bytes (or of unknown length) is large
LARGE_AT_ONCE = 4  # large requests handled at once (a call holds ~2-6 copies of its body); the rest wait
OWED_PER_SESSION = 1000  # SSE: replies one session's stream may owe, as the drain counts them
OWED_ID_SIZE = 256  # characters of a request id (as JSON) the drain keeps to answer it; longer ones it does not


@dataclasses.dataclass(eq=False)
class Session:
    client: str  # the address it was opened from
    last_seen: float  # anyio clock: when a request in it last started or ended
    busy: int = 0  # its requests in progress (an SSE event stream: 1 while open)


class SessionBook:
    """The sessions open in this process (streamable HTTP's, or SSE's event streams), to cap them in total
    (--max-sessions) and per client address (a 1/SESSION_SHARE share, so a flood from one address locks
    no one else out), and to forget them when they end, or idle past --session-idle-timeout as the SDK does."""

    def __init__(self, cap: int, idle_timeout: float) -> None:
        self.cap, self.share, self.idle_timeout = cap, max(1, cap // SESSION_SHARE), idle_timeout
        self.open: dict[str, Session] = {}  # least recently active first
        self.held: dict[str, int] = {}  # client address -> sessions it opened

    def refusal(self, client: str, now: float) -> tuple[int, str] | None:
        """Return (HTTP status, reason) when client may not open a session now, else None."""
        self.expire(now)
        if len(self.open) >= self.cap:
            warn_now_and_then("sessions", f"{self.cap} sessions open, the --max-sessions cap: new ones get 503")
            return 503, f"too many sessions open on this server ({self.cap}); retry later"
        if self.held.get(client, 0) >= self.share:
            warn_now_and_then("session share", f"{_loggable(client)} holds {self.share} sessions, its "
                              f"share of --max-sessions {self.cap}: its new ones get 429")
            return 429, f"too many sessions from this address ({self.share}); close some, or retry later"
        return None

    def opened(self, session: str, client: str, now: float, busy: int = 0) -> None:
        if session not in self.open:
            self.open[session] = Session(client, now, busy)
            self.held[client] = self.held.get(client, 0) + 1
            if METRICS:
                METRICS.sessions.inc()

    def touched(self, session: str, now: float, change: int) -> None:
        """A request in session started (change 1) or ended (-1)."""
        entry = self.open.pop(session, None)
        if entry:
            entry.busy, entry.last_seen = max(entry.busy + change, 0), now
            self.open[session] = entry  # now the most recently active

    def closed(self, session: str) -> None:
        entry = self.open.pop(session, None)
        if entry:
            if METRICS:
                METRICS.sessions.dec()
            self.held[entry.client] -= 1
            if not self.held[entry.client]:
                del self.held[entry.client]

    def expire(self, now: float) -> None:
        for session, entry in list(self.open.items()):
            if not entry.busy and entry.last_seen + self.idle_timeout > now:
                break  # the rest were active more recently
            if not entry.busy:
                self.closed(session)


def _is_request_id(value: Any) -> bool:
    """A JSON-RPC request id is a string or an integer; with anything else the SDK takes it as a notification."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def new_work(body: bytes) -> list | None:
    """Return the ids of the requests in a body that start new work (a call, a read ...: not a follow-up such
    as a list or a ping, nor a notification or a reply), [None] for a body too big to look into, else None."""
    if len(body) > INSPECTED_BODY:
        return [None]
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None
    messages = [m for m in (parsed if isinstance(parsed, list) else [parsed]) if isinstance(m, dict)]
    return [m["id"] for m in messages if m.get("method") not in (None, *FOLLOW_UPS)
            and _is_request_id(m.get("id"))] or None


def replaying(read: list, receive: Any) -> Any:
    """Return an ASGI receive that gives the messages already read first, then the rest."""
    async def replay():
        return read.pop(0) if read else await receive()

    return replay




def request_session(scope: dict, sse: bool) -> str | None:
    """Return the session a request belongs to: its mcp-session-id header, or an SSE post's session_id."""
    if sse and scope["method"] == "POST":
        return dict(urllib.parse.parse_qsl(scope.get("query_string", b"").decode("latin-1"))).get("session_id")
    return dict(scope["headers"]).get(b"mcp-session-id", b"").decode("latin-1") or None


class Health:
    """Answer the health route (200 while the process runs) and the readiness route (200 when ready,
    503 while starting or stopping, or while an upstream of a proxy cannot be reached); pass every other
    request on."""

    def __init__(self, app: Any, settings: Settings, state: Any, upstreams: Upstreams | None = None) -> None:
        self.app, self.health_path, self.ready_path, self.state = app, settings.health_path, settings.ready_path, state
        self.upstreams = upstreams  # a proxy's: each must answer

    async def __call__(self, scope, receive, send):
        if scope["path"] == self.health_path:
            return await send_json(send, 200, {"status": "ok"})
        if scope["path"] == self.ready_path:
            state = self.state()
            if state == "ready" and self.upstreams and (down := await self.upstreams.down()):
                return await send_json(send, 503, {"status": "upstream unreachable", "upstream": down})
            return await send_json(send, 200 if state == "ready" else 503, {"status": state})
        await self.app(scope, receive, send)


class AccessLog:
    """Write one line per request that reached the book of calls (Calls), once it has ended: client,
    method and path as sent, status (499: no response), duration, and the session, JSON-RPC methods
    and tool noted on its Flight. What a client sent is escaped and cut to LOGGED_FIELD characters."""

    def __init__(self, app: Any) -> None:
        self.app, self.log = app, logging.getLogger("mcprun.access")

    async def __call__(self, scope, receive, send):
        began = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            if (flight := scope.get(FLIGHT)) is not None:
                self.write(scope, flight, began)

    def write(self, scope: dict, flight: Flight, began: float) -> None:
        if not self.log.isEnabledFor(logging.INFO):  # --log-level WARNING or above
            return
        client = scope.get("client")
        path = scope.get("raw_path", b"").decode("latin-1") or scope["path"]  # as sent: %0a stays %0a
        fields = {
            "client": f"{client[0]}:{client[1]}" if client else "-", "method": _loggable(scope["method"]),
            "path": _loggable(path), "status": flight.status or 499,
            "duration_ms": round((time.perf_counter() - began) * 1000, 1),
            "session": flight.session and flight.session[:8] + "…",  # enough to follow a session, not to use it
            "rpc": _loggable(flight.rpc) or None, "tool": _loggable(flight.tool) or None,
            "caller": flight.caller or None,
        }
        extra = "".join(f" {key}={fields[key]}" for key in ("caller", "session", "rpc", "tool") if fields[key])
        self.log.info('%s "%s %s" %d %.1fms%s', fields["client"], fields["method"], fields["path"],
                      fields["status"], fields["duration_ms"], extra, extra={"fields": fields})


class Closing:
    """Once the drain has begun, refuse new event streams (they would hold the process open); once it
    has ended, refuse everything: 503 and 'Connection: close'."""

    def __init__(self, app: Any, calls: Any) -> None:
        self.app, self.calls = app, calls

    async def __call__(self, scope, receive, send):
        if (self.calls.stopping and scope["method"] == "GET") or self.calls.stopped:
            return await send_json(send, 503, {"error": "server shutting down"}, headers=((b"connection", b"close"),))
        await self.app(scope, receive, send)


class Sessions:
    """Cap the sessions open (streamable HTTP's, or SSE's event streams) in total and per client address,
    refusing a new one with 503 or 429 (SessionBook); keep the book as requests in a session start and end."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app, self.sse = app, settings.transport == "sse"
        self.book = SessionBook(settings.max_sessions, settings.session_idle_timeout)

    async def __call__(self, scope, receive, send):
        import anyio

        book, stream = self.book, scope["method"] == "GET"
        session = request_session(scope, self.sse)
        client, now = (scope.get("client") or ("-",))[0], anyio.current_time()
        opening = stream if self.sse else scope["method"] == "POST" and session is None
        if opening and (refused := book.refusal(client, now)):
            if METRICS:
                METRICS.limited.labels("sessions").inc()
            return await send_json(send, refused[0], {"jsonrpc": "2.0", "id": None, "error": {
                "code": -32000, "message": refused[1]}}, headers=((b"retry-after", b"10"),))
        status = 0
        held = f"stream {id(scope)}" if self.sse and stream else session  # an SSE stream is its session

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name == b"mcp-session-id" and session is None and status == 200:  # a new session
                        book.opened(value.decode("latin-1"), client, anyio.current_time())
            await send(message)

        if self.sse and stream:
            book.opened(held, client, now, busy=1)
        elif session:
            book.touched(session, now, 1)
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            if self.sse and stream:
                book.closed(held)
            elif session:
                ended = status == 404 or (scope["method"] == "DELETE" and status in (200, 204))
                book.closed(session) if ended else book.touched(session, anyio.current_time(), -1)


class LargeBodies:
    """Handle at most LARGE_AT_ONCE requests whose body is over LARGE_BODY bytes (or of unknown length)
    at once; the rest wait, unread, for a place up to --read-timeout, then get 503. uvicorn stops reading
    a body past 64 kB until the app reads it, so the memory large requests take is bounded by the places."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app, self.timeout = app, settings.read_timeout
        self.places = None  # an anyio.Semaphore, made in the running loop

    async def __call__(self, scope, receive, send):
        length = dict(scope["headers"]).get(b"content-length", b"")
        if scope["method"] != "POST" or (length.isdigit() and int(length) <= LARGE_BODY):
            return await self.app(scope, receive, send)
        if not await self.admitted():
            if METRICS:
                METRICS.limited.labels("large_bodies").inc()
            return await send_json(send, 503, {"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message":
                                   "server busy with large requests; retry later"}}, headers=((b"retry-after", b"5"),))
        try:
            await self.app(scope, receive, send)
        finally:
            self.places.release()

    async def admitted(self) -> bool:
        import anyio

        if self.places is None:
            self.places = anyio.Semaphore(LARGE_AT_ONCE)
        with anyio.move_on_after(self.timeout or None):
            await self.places.acquire()
            return True
        warn_now_and_then("large", f"{LARGE_AT_ONCE} large requests (over 1 MiB) in progress for "
                          f"{self.timeout:g} s: the next ones get 503")
        return False


class Calls:
    """The book of requests in flight, for a graceful drain.

    Each request gets a Flight (shared with the pieces around it under scope[FLIGHT]): its JSON-RPC
    ids, methods and tool from the body; its status, session and kind of response from what is sent;
    for SSE, the replies its session's event stream still owes. A client that goes away mid-call has
    its calls cancelled in its session. drain() stops new work and ends what is left at its deadline.
    """

    def __init__(self, app: Any, server_app: Any, settings: Settings) -> None:
        self.app, self.server_app, self.sse = app, server_app, settings.transport == "sse"
        self.stopping = False  # draining: new calls are refused (or, RETIRING, served) and connections close
        self.stopped = False  # drained: whatever comes now is refused (Closing)
        self.flights: set[Flight] = set()
        self.pending: dict[str, set] = {}  # SSE: open stream's session -> ids of accepted calls its stream owes
        self.last_call_ended = float("-inf")  # anyio clock

    async def __call__(self, scope, receive, send):
        import anyio

        state = scope.get("state") or {}
        first = state.get(FIRST_ON_CONNECTION, False)  # in a drain: its connection was taken before the drain
        flight = Flight(stream=scope["method"] == "GET", session=request_session(scope, self.sse),
                        cancel=anyio.CancelScope(), late=self.stopping, caller=state.get(CLIENT_CERTIFICATE, ""))
        scope[FLIGHT] = flight
        send = self.watched(flight, send)
        self.flights.add(flight)
        if METRICS and flight.stream:
            METRICS.streams.inc()
        try:
            with flight.cancel:
                if flight.late and not first and not RETIRING.is_set() and scope["method"] == "POST" and not self.sse:
                    receive = await self.refuse_new_work(receive, send)
                    if receive is None:
                        return
                await self.app(scope, self.inspected(flight, receive), send)
            if flight.cancel.cancelled_caught:
                await self.end_stopped(flight, send)
            elif flight.disconnected and not flight.finished and flight.request_ids and flight.session:
                await self.cancel_abandoned(scope, flight)
        finally:
            self.flights.discard(flight)
            if METRICS and flight.stream:
                METRICS.streams.dec()
            if not flight.stream:
                self.last_call_ended = anyio.current_time()
            if flight.stream and self.sse and flight.session:
                self.pending.pop(flight.session, None)

    def inspected(self, flight: Flight, receive: Any) -> Any:
        """Wrap receive: note a disconnect, and the JSON-RPC in the body (its first INSPECTED_BODY bytes)."""
        body = bytearray()

        async def receive_and_inspect():
            message = await receive()
            if message["type"] == "http.disconnect":
                flight.disconnected = True
            elif message["type"] == "http.request" and len(body) <= INSPECTED_BODY:
                body.extend(message.get("body", b""))
                if not message.get("more_body") and body:
                    self.inspect_body(flight, bytes(body))
            return message

        return receive_and_inspect

    def watched(self, flight: Flight, send: Any) -> Any:
        """Wrap send: note the status, session and kind of the response (and, for SSE, the replies its
        stream owes or delivers); in the drain, ask the client to close the connection."""
        async def send_and_watch(message):
            if message["type"] == "http.response.start":
                flight.status = message["status"]
                if flight.late:  # the client is to open its next request elsewhere
                    message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
                owed = self.pending.get(flight.session or "") if self.sse and not flight.stream else None
                if owed is not None and flight.status == 202:  # the SDK took the call: the stream owes its reply
                    owed.update([i for i in flight.request_ids if len(i) <= OWED_ID_SIZE][:OWED_PER_SESSION - len(owed)])
                for name, value in message.get("headers", ()):
                    if name == b"content-type":
                        flight.event_stream = value.startswith(b"text/event-stream")
                    elif name == b"mcp-session-id":
                        flight.session = value.decode("latin-1")
            elif message["type"] == "http.response.body":
                if flight.stream and self.sse:
                    self.note_sse_output(flight, message.get("body", b""))
                flight.finished = not message.get("more_body", False)
            await send(message)

        return send_and_watch

    async def refuse_new_work(self, receive: Any, send: Any) -> Any:
        """In the drain: answer a POST that starts new calls with 503 and return None; else return a receive
        that replays the body read to look."""
        read = await self.read_body(receive)
        if refused := new_work(b"".join(message.get("body", b"") for message in read)):
            errors = [{"jsonrpc": "2.0", "id": request_id, "error": SHUTDOWN_ERROR} for request_id in refused]
            await send_json(send, 503, errors[0] if len(errors) == 1 else errors)
            return None
        return replaying(read, receive)

    @staticmethod
    async def read_body(receive: Any) -> list:
        """Read a request's body messages (at most a little over INSPECTED_BODY bytes), to look before passing."""
        read, size = [], 0
        while size <= INSPECTED_BODY:
            read.append(await receive())
            size += len(read[-1].get("body", b""))
            if read[-1]["type"] != "http.request" or not read[-1].get("more_body"):
                break
        return read

    def inspect_body(self, flight: Flight, body: bytes) -> None:
        """Note the JSON-RPC methods, tool and request ids of a request body."""
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):  # the server's own parser answers these with -32700
            return
        messages = [m for m in (parsed if isinstance(parsed, list) else [parsed]) if isinstance(m, dict)]
        requests = [m for m in messages if "method" in m and _is_request_id(m.get("id"))]
        flight.rpc = ",".join(str(m["method"]) for m in messages if "method" in m)
        flight.tool = ",".join(str(m["params"].get("name")) for m in messages if m.get("method") == "tools/call"
                               and isinstance(m.get("params"), dict))
        flight.request_ids = tuple(json.dumps(m["id"]) for m in requests)

    def note_sse_output(self, flight: Flight, chunk: bytes) -> None:
        """Follow an SSE stream: its session (from the endpoint event) and the responses it delivers."""
        if flight.session is None and (found := _SSE_SESSION.search(chunk)):
            flight.session = found[1].decode()
            self.pending[flight.session] = set()  # forgotten when this stream ends
        owed = self.pending.get(flight.session or "")
        if owed:
            for found in _SSE_RESPONSE.finditer(chunk):
                owed.discard(json.dumps(json.loads(found[1])))

    async def cancel_abandoned(self, scope: dict, flight: Flight) -> None:
        """The client went away mid-call: cancel its requests in its session, as a polite client would,
        so the tools stop and free what they hold instead of running until the session expires."""
        kept = (b"host", b"mcp-session-id", b"mcp-protocol-version")
        for request_id in flight.request_ids:
            body = json.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled",
                               "params": {"requestId": json.loads(request_id), "reason": "client disconnected"}})
            headers = [(name, value) for name, value in scope["headers"] if name in kept]
            headers += [(b"content-type", b"application/json"), (b"accept", b"application/json, text/event-stream"),
                        (b"content-length", str(len(body)).encode())]
            messages = [{"type": "http.disconnect"}, {"type": "http.request", "body": body.encode()}]

            async def receive():
                return messages.pop() if len(messages) > 1 else messages[0]

            async def discard(message):
                pass

            try:
                await self.server_app({**scope, "headers": headers}, receive, discard)
            except Exception as exc:  # the session may be gone already
                logging.getLogger("mcprun").debug("cancelling %s after a disconnect: %s", request_id, exc)

    async def end_stopped(self, flight: Flight, send: Any) -> None:
        """Finish a request the drain stopped: tell the client each unanswered call failed."""
        owed = self.pending.pop(flight.session, set()) if (self.sse and flight.stream) else (
            set() if flight.stream else set(flight.request_ids))
        errors = [{"jsonrpc": "2.0", "id": json.loads(request_id), "error": SHUTDOWN_ERROR} for request_id in owed]
        try:
            if not flight.status:
                await send_json(send, 503, errors[0] if len(errors) == 1 else errors or
                                {"error": "server shutting down"})
            elif not flight.finished:
                if flight.event_stream:
                    for error in errors:
                        await send({"type": "http.response.body", "more_body": True,
                                    "body": b"event: message\r\ndata: " + json.dumps(error).encode() + b"\r\n\r\n"})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client has gone

    def busy(self) -> bool:
        """Return True while a call is in flight: a POST, or an SSE response still owed."""
        return any(not flight.stream for flight in self.flights) or any(self.pending.values())

    async def drain(self, timeout: float, forced: Any, unstarted: Any) -> None:
        """Stop taking streams and new calls, let calls finish for up to timeout seconds, then end what is left.

        A request that begins in the drain is answered with 'Connection: close', so that the client
        opens its next one elsewhere; a new call in it (anything but FOLLOW_UPS, notifications and
        replies) gets 503 and a JSON-RPC error, unless the process is RETIRING (a worker replaced:
        the others serve the socket on), which serves it, or it is the first request on its
        connection: that connection was taken before the port closed, and its client (a balancer
        that connects for each request) had no other place to send it. unstarted() tells whether
        such a connection has yet to send its request: the drain waits for it FIRST_REQUEST_WAIT
        seconds. Connections stay open until no call has ended for DRAIN_LINGER seconds: clients
        follow a call at once on the same connection (MCP SDKs list the tools to check a call's
        result), and that request would otherwise meet a closed connection and a closed port.
        """
        import anyio

        self.stopping = True
        if METRICS:
            METRICS.drains.inc()
            METRICS.draining.inc()
        began = anyio.current_time()
        deadline = began + timeout
        for flight in list(self.flights):
            if flight.stream and not self.sse:  # streamable HTTP's listening stream carries no call results
                flight.cancel.cancel()
        while ((self.busy() or anyio.current_time() < self.last_call_ended + DRAIN_LINGER
                or (anyio.current_time() < began + FIRST_REQUEST_WAIT and unstarted()))
               and not forced() and anyio.current_time() < deadline):
            await anyio.sleep(0.05)
        self.stopped = True
        for flight in list(self.flights):
            flight.cancel.cancel()
        for _ in range(20):  # let the stopped requests send their last words
            if not self.flights:
                break
            await anyio.sleep(0.01)


class ResourceMetadata:
    """Answer RFC 9728's protected-resource metadata route, without a token, to any origin (clients find the
    authorization server there); pass every other request on."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app, self.path, self.document = app, resource_metadata_path(settings), resource_metadata(settings)

    async def __call__(self, scope, receive, send):
        if scope["path"] in (self.path, "/.well-known/oauth-protected-resource") and scope["method"] in ("GET", "HEAD"):
            return await send_json(send, 200, self.document, headers=((b"access-control-allow-origin", b"*"),
                                                                       (b"cache-control", b"max-age=3600")))
        await self.app(scope, receive, send)


class Gateway:
    """mcprun's ASGI front for every server over HTTP: the server's app behind these pieces, in this order:

    MeteredHttp → Health → ScrapeRoute → ResourceMetadata → AccessLog → Traced → Closing → Sessions →
    LargeBodies → Calls → the Host/Origin guard → CORS → BearerAuth → RateLimit → the SDK's body limit →
    JsonOnly → the server's app.

    No MeteredHttp without --metrics(-listen), no ScrapeRoute without --metrics (it checks the token as
    BearerAuth does), no ResourceMetadata without --auth-jwks, no AccessLog with --no-access-log, no Traced
    without an OTLP endpoint, no Sessions with --stateless, no CORS without --cors-origin, no BearerAuth
    without a token or --auth-jwks, no RateLimit without --rate-limit. The lifespan goes straight to the
    server's app; once it has started, the app's session cap is set, its own body limit taken out (this one
    reads every request first) and the server is announced.
    """

    def __init__(self, app: Any, settings: Settings, tokens: dict, on_ready: Any,
                 verifier: JwtVerifier | None = None, upstreams: Upstreams | None = None) -> None:
        from fastmcp.server.http import HostOriginGuardMiddleware
        from mcp.server.transport_security import RequestBodyLimitMiddleware

        self.server_app, self.settings, self.on_ready = app, settings, on_ready
        self.ready = False
        guarded = RequestBodyLimitMiddleware(JsonOnly(app, settings), settings.max_body)
        if settings.rate_limit:
            guarded = RateLimit(guarded, settings.rate_limit)
        metadata_url = urllib.parse.urljoin(settings.auth_resource, resource_metadata_path(settings)) \
            if verifier else ""
        self.auth = BearerAuth(guarded, tokens, verifier, metadata_url) if tokens or verifier else None
        guarded = self.auth or guarded
        if settings.cors_origins:
            from starlette.middleware.cors import CORSMiddleware

            guarded = CORSMiddleware(
                guarded, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST", "DELETE"],
                allow_headers=["authorization", "content-type", "accept", "last-event-id", "mcp-session-id",
                               "mcp-protocol-version"],
                expose_headers=["mcp-session-id", "mcp-protocol-version"], max_age=600)
        origins = settings.allowed_origins + settings.cors_origins
        self.guarded = HostOriginGuardMiddleware(guarded, allowed_hosts=list(settings.allowed_hosts) or None,
                                                 allowed_origins=list(origins) or None)
        self.calls = Calls(self.guarded, app, settings)
        chain = LargeBodies(self.calls, settings)
        if not settings.stateless:
            chain = Sessions(chain, settings)
        chain = Closing(chain, self.calls)
        if traces_wanted(settings, os.environ):
            chain = Traced(chain, settings)
        if settings.access_log:
            chain = AccessLog(chain)
        if verifier:
            chain = ResourceMetadata(chain, settings)
        if settings.metrics:
            chain = ScrapeRoute(chain, settings, self.auth and self.auth.guarding)
        self.chain = Health(chain, settings, self.state, upstreams)
        if METRICS:
            self.chain = MeteredHttp(self.chain, settings, METRICS)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            return await self.lifespan(scope, receive, send)
        if scope["type"] != "http":
            return await self.guarded(scope, receive, send)
        await self.chain(scope, receive, send)

    def state(self) -> str:
        return "stopping" if self.calls.stopping else "ready" if self.ready else "starting"

    async def lifespan(self, scope, receive, send):
        async def send_and_note(message):
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                set_inner_limits(self.server_app, self.settings.max_sessions)
                self.ready = True
                self.on_ready()

        await self.server_app(scope, receive, send_and_note)

    async def drain(self, timeout: float, forced: Any, unstarted: Any) -> None:
        await self.calls.drain(timeout, forced, unstarted)


def raise_descriptor_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (systemd's soft default is 1,024,
    for programs that still use select()); return the soft limit now."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(settings: Settings) -> int:
    """Return how many connections to hold open at once: --max-connections, within the file descriptors left."""
    room = max(raise_descriptor_limit() - DESCRIPTOR_RESERVE, 1)
    if room >= settings.max_connections:
        return settings.max_connections
    said = (f"only {room} connections at once: the open files limit leaves no room for {settings.max_connections} "
            "(raise it: LimitNOFILE= in the unit, ulimit -n)")
    warn(said) if "max_connections" in settings.sources else logging.getLogger("mcprun").debug(said)
    return room


def pace_accepts(loop: Any) -> None:
    """Take one new connection per wake-up, and say once a minute that there are no descriptors for more.

    asyncio's selector loop accepts up to the backlog (2,048 with uvicorn) each time the socket is
    readable. Out of file descriptors, that loop logs and schedules a retry for every connection
    waiting: 100 % CPU and megabytes of log a second. One per wake-up logs once and retries in a
    second. Workers sharing a socket need it too: one worker would take a whole burst, and
    keep-alive clients would stay on it; taking one lets the others, woken too, take the next.
    """
    accept_one_at_a_time(loop)
    default = loop.get_exception_handler() or type(loop).default_exception_handler

    def handle(loop, context):
        if context.get("message") == "socket.accept() out of system resource":
            warn_now_and_then("accept", f"cannot take new connections: {context['exception'].strerror}; they "
                              "wait (raise the open files limit: LimitNOFILE=, ulimit -n; or lower --max-connections)")
        else:
            default(loop, context)

    loop.set_exception_handler(handle)


def reopen_audit_log(audit: AuditLog) -> None:
    """SIGHUP over stdio: open the audit log's path again (logrotate renamed the file)."""
    try:
        audit.reopen()
    except Error as exc:
        error(f"SIGHUP: {exc}; still writing to the file it had")
        return
    info(f"SIGHUP: reopened the audit log {audit.path}")


def reload_credentials(settings: Settings, gateway: Gateway, tls: TLS | None, audit: AuditLog | None) -> None:
    """SIGHUP: read the token file, the JWKS file, the policy file and the TLS certificate and key again,
    reopen the audit log, and fetch a JWKS URL in the background; on a fault, keep serving with what was
    loaded before, and say why in one line."""
    import asyncio

    verifier = gateway.auth.verifier if gateway.auth else None
    reloaded = []
    try:
        tokens = read_auth_tokens(settings) if settings.auth_token_file and gateway.auth else None
        keys = verifier.read() if verifier and not verifier.remote else None
        rules = [(offer.callers, offer.callers.read()) for offer in _NARROWED.values() if offer.callers]
        if tls:
            tls.reload()
            reloaded.append(f"the certificate {settings.tls_cert}")
        if audit:
            audit.reopen()
            reloaded.append(f"the audit log {settings.audit_log}")
    except Error as exc:
        error(f"SIGHUP: {exc}; still serving with what was loaded before")
        return
    for callers, read in rules:
        callers.rules = read
    if rules:
        reloaded.insert(0, f"the policy {settings.policy}")
    if keys is not None:
        verifier.keys = keys
        reloaded.insert(0, f"the keys from {settings.auth_jwks}")
    if tokens is not None:
        gateway.auth.replace(tokens)
        reloaded.insert(0, f"{len(tokens)} token{'s' if len(tokens) != 1 else ''} from {settings.auth_token_file}")
    if reloaded:
        info(f"SIGHUP: reloaded {' and '.join(reloaded)}")
    if verifier and verifier.remote:
        info(f"SIGHUP: fetching the keys from {settings.auth_jwks}")
        verifier.fetching = asyncio.get_running_loop().create_task(verifier.fetch())  # a reference kept
        verifier.fetching.add_done_callback(
            lambda task: task.result() and info(f"SIGHUP: fetched the keys from {settings.auth_jwks}"))


async def serve_http(server: Any, settings: Settings, target: Target, upstreams: Upstreams,
                     watched: Upstreams | None = None, sock: socket.socket | None = None, announce: Any = None,
                     audit: AuditLog | None = None) -> None:
    """Serve over streamable HTTP or SSE with uvicorn, behind mcprun's gateway.

    On sock when given (systemd's, or a worker's shared one), else on one bound here. announce is
    called with the server's description once it is ready; by default it logs the ready line.
    """
    import asyncio

    import anyio
    import uvicorn

    tokens = read_auth_tokens(settings)
    own_auth = server_has_own_auth(server)
    if settings.auth_jwks and own_auth:
        raise UsageError("the server configures its own authentication: drop --auth-jwks (and MCPRUN_AUTH_JWKS), "
                         "or remove auth from the server")
    verifier = JwtVerifier(settings) if settings.auth_jwks else None
    if tokens and own_auth:
        raise UsageError("the server configures its own authentication: drop --auth-token/--auth-token-file "
                         "(and MCPRUN_AUTH_TOKEN*), or remove auth from the server")
    if not tokens and not verifier and not own_auth:
        if settings.require_auth:
            raise UsageError("--require-auth: no token given; set MCPRUN_AUTH_TOKEN or --auth-token-file FILE")
        host = sock.getsockname()[0] if sock else settings.host
        if not is_loopback(host):
            warn(f"serving on {host} without authentication: anyone who can reach the port can call "
                 "every tool; set --auth-token-file FILE or MCPRUN_AUTH_TOKEN (--require-auth makes this an error)")
    tls = TLS(settings) if settings.tls_cert else None
    sock = sock or bind_socket(settings.host, settings.port)
    description = describe_server(server, target)
    announce = announce or announcer(settings, sock)
    gateway = Gateway(build_http_app(server, settings), settings, tokens, lambda: announce(description), verifier,
                      upstreams)
    if settings.workers == 1 and (tls or settings.auth_token_file or verifier or settings.policy or audit):
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload_credentials, settings, gateway, tls,
                                                      audit)  # workers are replaced instead

    keep_sse_streams_at_sigterm()  # sse-starlette would end every stream at SIGTERM, calls in flight too

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets=None):
            for listener in uvicorn_listeners(self):  # stop accepting first
                listener.close()
            sd_notify("STOPPING=1")
            await gateway.drain(settings.graceful_timeout, lambda: uvicorn_forced(self),
                                lambda: any(c.unstarted() for c in uvicorn_connections(self)))
            end_sse_streams()  # any event stream the drain did not see
            self.config.timeout_graceful_shutdown = 1  # only idle connections are left to close
            await super().shutdown(sockets)

    pace_accepts(asyncio.get_running_loop())
    config = uvicorn.Config(gateway, http=guarded_protocol(connection_cap(settings), settings.read_timeout),
                            log_config=None, log_level=settings.log_level.lower(), lifespan="on",
                            access_log=False, server_header=False,
                            timeout_graceful_shutdown=max(settings.graceful_timeout, 1),
                            ssl_context_factory=(lambda *_: tls.context) if tls else None)
    # uvicorn drains on SIGTERM, then re-raises it to the previous handler: make that one
    # a no-op so a clean shutdown exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    token = _driving.set(True)
    uvicorn_server = DrainingServer(config)
    try:
        await unless_upstream_fails(uvicorn_server.serve(sockets=[sock]), watched,
                                    lambda: setattr(uvicorn_server, "should_exit", True))
    finally:
        _driving.reset(token)
        sock.close()


def import_state_store(server: Any) -> None:
    """Import what a fastmcp server reads at a session's first list (its state store, py-key-value, and the
    beartype that checks it: ~150 ms), now, with the rest of the start, so that the first tools/list
    answers at once."""
    if server_kind(server) != "fastmcp":
        return
    if "key_value.aio" not in sys.modules and os.environ.get("PY_KEY_VALUE_DISABLE_BEARTYPE", "").lower() in (
            "true", "1", "yes"):
        import_key_value_unclawed()
    import key_value.aio.adapters.pydantic  # noqa: F401
    import key_value.aio.stores.memory  # noqa: F401


def collect_from_now_on() -> None:
    """The start is over: what it imported and built lives as long as the process, so the collector, off
    since main() (start-up allocates much and frees little), leaves it alone (gc.freeze) from now on."""
    gc.freeze()
    gc.enable()


async def unless_upstream_fails(serving: Any, upstreams: Upstreams | None, stop: Any = None) -> None:
    """Await serving; with upstreams to watch (--exit-on-upstream-failure), stop it once one fails, with
    stop() (uvicorn drains), and raise that Failure. Without stop (stdio, whose reader thread no
    cancellation reaches), say it and exit at once: the client sees the end of its stream."""
    import anyio

    if upstreams is None:
        return await serving
    failure = None

    async def watching():
        nonlocal failure
        failure = await upstreams.watch()
        if stop is None:
            error(failure)
            sys.stderr.flush()
            os._exit(EXIT_FAILURE)
        stop()

    async with anyio.create_task_group() as group:
        group.start_soon(watching)
        await serving
        group.cancel_scope.cancel()
    if failure:
        raise Failure(failure)


async def serve(server: Any, settings: Settings, target: Target, sock: socket.socket | None = None,
                announce: Any = None, wire: Wire | None = None) -> None:
    """Run the server on the chosen transport until it stops (stdio: on wire; HTTP: see serve_http)."""
    import asyncio

    settings = adopt_server_settings(settings, server)
    narrow_offer(server, settings)
    audit = AuditLog(settings.audit_log) if settings.audit_log else None
    if audit:
        audit_requests(server, settings, audit)
    start_metrics(server, settings)
    upstreams = Upstreams(target)
    if settings.exit_on_upstream_failure and not upstreams:
        raise UsageError(f"--exit-on-upstream-failure watches a proxy's upstreams: {target.spec} is no URL nor "
                         "mcp.json (of url entries or stdio servers)")
    watched = upstreams if settings.exit_on_upstream_failure else None
    tracing = start_tracing(server, settings) if traces_wanted(settings, os.environ) else None
    try:
        await _serve_transport(server, settings, target, sock, announce, wire, audit, upstreams, watched)
    finally:
        if tracing:
            tracing.shutdown()  # the spans still in the batch are sent now, a short stdio run's too


async def _serve_transport(server: Any, settings: Settings, target: Target, sock: socket.socket | None,
                           announce: Any, wire: Wire | None, audit: AuditLog | None, upstreams: Upstreams,
                           watched: Upstreams | None) -> None:
    import asyncio

    import_state_store(server)
    collect_from_now_on()
    logging.getLogger("mcprun").debug("serving %s (%s)", describe_server(server, target), server_path(server))
    if settings.transport == "stdio":
        if settings.show_banner and settings.log_level in ("DEBUG", "INFO"):
            info(f"serving {describe_server(server, target)} over stdio")
        if audit:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reopen_audit_log, audit)
        await unless_upstream_fails(serve_stdio(server, settings, wire or take_wire()), watched)
    else:
        await serve_http(server, settings, target, upstreams, watched, sock, announce, audit)


# -- lifecycle: serve, reload ------------------------------------------------


async def _serve_checked(server: Any, settings: Settings, target: Target, serve_server: Any) -> None:
    """Check what the server object declares it needs (FastMCP(dependencies=...)), then serve it."""
    check_requirements(server_dependencies(server), settings, target.spec)
    await serve_server(server, settings)


async def _serve_loaded(loaded: Any, settings: Settings, target: Target, serve_server: Any, catcher: Catcher) -> None:
    server = await await_factory(loaded, catcher) if inspect.iscoroutinefunction(loaded) else loaded
    if server is not None:
        await _serve_checked(server, settings, target, serve_server)


def launch(settings: Settings, target: Target, serve_server: Any) -> None:
    """Load the target and serve its server with serve_server(server, settings), an async function.

    A server that the code starts itself (a console script, -m, --script, a function named as
    SPEC, a module that calls run() when imported) is caught and served the same way.
    """
    import anyio

    async def started(server: Any, transport: str, options: dict) -> None:
        await _serve_checked(server, adopt_started(settings, transport, options), target, serve_server)

    catcher = Catcher(started)
    try:
        loaded = start_target(settings, target, catcher)
        if loaded is not None:
            anyio.run(_serve_loaded, loaded, settings, target, serve_server, catcher)
    except Exception:
        catcher.raise_failure()  # first: the code's own handling of that failure may fail in turn
        raise
    catcher.raise_failure()


def stop_processes(pids: list[int], group: bool = False) -> None:
    """SIGTERM these children (with group, their process groups), SIGKILL those still running after
    RELOAD_STOP_TIMEOUT, and reap them."""
    left = list(pids)
    deadline = time.monotonic() + RELOAD_STOP_TIMEOUT
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in list(left):
            try:
                os.killpg(pid, signum) if group else os.kill(pid, signum)
            except (ProcessLookupError, PermissionError):
                left.remove(pid)  # gone, reaped elsewhere
        while left:
            for pid in list(left):
                try:
                    if os.waitpid(pid, 0 if signum == signal.SIGKILL else os.WNOHANG)[0]:
                        left.remove(pid)
                except ChildProcessError:
                    left.remove(pid)
            if not left or time.monotonic() >= deadline:
                break
            time.sleep(0.02)


def run_with_reload(settings: Settings, target: Target) -> int:
    """Run mcprun in a child process and restart it whenever a watched file changes."""
    import threading

    import watchfiles

    folders = settings.reload_dirs or (str(target.path.parent) if target.path else os.getcwd(),)
    for folder in folders:
        if not os.path.isdir(folder):
            raise UsageError(f"--reload-dir {folder!r} is not a folder")
    end = _options_end(list(settings.argv))  # the flags go before any '--', which starts the server's args
    command = [*this_program().command, *settings.argv[:end], "--no-reload", "--stateless", *settings.argv[end:]]
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, lambda *_: stop.set())
    info(f"reload: watching {', '.join(folders)}")
    child = subprocess.Popen(command, start_new_session=True)
    exited_reported = False
    changes = watchfiles.watch(*folders, watch_filter=watchfiles.PythonFilter(extra_extensions=RELOAD_EXTENSIONS),
                               stop_event=stop, yield_on_timeout=True, rust_timeout=300, raise_interrupt=False)
    for changed in changes:
        if stop.is_set():
            break
        if changed:
            info(f"reload: {_short_path(sorted(changed)[0][1])} changed; restarting")
            stop_processes([child.pid], group=True)
            child = subprocess.Popen(command, start_new_session=True)
            exited_reported = False
        elif child.poll() is not None and not exited_reported:
            if child.returncode == 0 and settings.transport == "stdio":
                return EXIT_OK  # the client closed stdin: nothing left to serve
            info(f"reload: server exited with code {child.returncode}; waiting for a change")
            exited_reported = True
    stop_processes([child.pid], group=True)
    return EXIT_OK


# -- lifecycle: worker processes ---------------------------------------------


@dataclasses.dataclass(eq=False)
class Worker:
    """One worker process, as its supervisor sees it."""

    pid: int
    status: int  # read end of the pipe the worker reports on: 'ready' and what it serves, or why it could not start
    generation: int  # SIGHUP starts a new generation; older workers are replaced
    ready: bool = False
    stopping: bool = False
    description: str = ""
    failure: tuple | None = None  # (exit code, message) from a worker that could not start
    received: bytes = b""


def _read_reports(worker: Worker) -> bool:
    """Read a worker's reports ('ready<TAB>description', 'error<TAB>code<TAB>message'); True if it just became ready."""
    if worker.status < 0:
        return False
    was_ready = worker.ready
    try:
        while chunk := os.read(worker.status, 65536):
            worker.received += chunk
        os.close(worker.status)  # end of file: the worker is ready (or gone) and closed its end
        worker.status = -1
    except BlockingIOError:
        pass
    *lines, worker.received = worker.received.split(b"\n")
    for line in lines:
        kind, _, rest = line.decode("utf-8", "replace").partition("\t")
        if kind == "ready":
            worker.ready, worker.description = True, rest
        elif kind == "error":
            code, _, message = rest.partition("\t")
            worker.failure = (int(code), message)
    return worker.ready and not was_ready


def _exit_status(status: int) -> str:
    """Say how a process ended, from its wait status."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _stop_without_supervisor(supervisor: int) -> None:
    """In a worker: drain and stop, as SIGTERM does, once the supervisor is gone (killed with SIGKILL)."""
    while os.getppid() == supervisor:
        time.sleep(PARENT_POLL_INTERVAL)
    os.kill(os.getpid(), signal.SIGTERM)


def serve_worker(settings: Settings, target: Target, sock: socket.socket, status: int, supervisor: int,
                 inherited: list[int], blocked: set, hushed: bool = False) -> int:
    """In a forked worker: load the server and serve it on the shared socket; return the exit code.

    It reports on the status pipe once ready, or why it could not start (the supervisor says so), and
    drains and stops when the supervisor is gone. A hushed worker keeps the warnings of its start to
    itself: another worker of its generation says the same ones.
    """
    import threading

    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # until uvicorn takes it: stop at once while loading
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, lambda *_: None)  # a terminal's hang-up is the supervisor's to act on
    signal.signal(signal.SIGUSR1, lambda *_: (RETIRING.set(), signal.raise_signal(signal.SIGTERM)))
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    for fd in inherited:
        os.close(fd)
    os.environ.pop("NOTIFY_SOCKET", None)  # the supervisor speaks to systemd
    threading.Thread(target=_stop_without_supervisor, args=(supervisor,), daemon=True).start()
    reporting = [status]

    def starting(record: logging.LogRecord) -> bool:  # a filter: no warn() lines while starting
        return record.levelno != logging.WARNING

    if hushed:
        logging.getLogger("mcprun").addFilter(starting)

    def report(line: str) -> None:
        if reporting:
            try:
                os.write(reporting[0], (line + "\n").encode())
            except OSError:
                pass

    def announce(description: str) -> None:
        report(f"ready\t{description}")
        os.close(reporting.pop())  # from now on, failures are this worker's to log
        logging.getLogger("mcprun").removeFilter(starting)

    try:
        launch(settings, target, lambda server, chosen: serve(server, chosen, target, sock, announce))
        return EXIT_OK
    except KeyboardInterrupt:
        return EXIT_OK
    except SystemExit as exc:  # the server's code called sys.exit()
        code = exc.code if isinstance(exc.code, int) else EXIT_FAILURE
        report(f"error\t{code}\ta worker exited with code {code} while starting (see the lines above)")
        return code
    except BaseException as raised:
        code, message = describe_failure(raised, settings.debug)
        if reporting:
            report(f"error\t{code}\t{message}")
        else:
            error(message)
        return code
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


class Supervisor:
    """The process that serves HTTP from settings.workers processes sharing one listening socket, and looks
    after them (run_workers).

    This process imports the bundled stack, not the server: each worker (a fork, so nothing is
    imported or unpacked twice) loads the server itself, so a replacement runs the code on disk.
    A worker that dies is replaced, after a growing pause if it died starting; if the first ones
    cannot start, the first error ends the run. SIGTERM/SIGINT drain every worker (a second SIGINT
    stops them at once); SIGHUP replaces them one at a time, each new one ready before an old one
    stops, so the socket never stops accepting.
    """

    def __init__(self, settings: Settings, target: Target, sock: socket.socket | None) -> None:
        self.settings, self.target = settings, target
        self.notes = (f"{settings.workers} workers", *(("socket from systemd",) if sock else ()))
        self.sock = sock or bind_socket(settings.host, settings.port)
        self.wanted = settings.workers
        self.pid = os.getpid()
        self.workers: list[Worker] = []
        self.signals: list[int] = []  # received, not yet acted on
        self.generation = 0  # SIGHUP starts a new one: older workers are replaced
        self.failures = 0  # workers in a row that died starting
        self.next_start = 0.0  # monotonic time before which no worker starts (the back-off)
        self.announced = False  # the ready line is out: a worker that dies starting no longer ends the run
        self.reloading = False  # a SIGHUP's replacement is under way
        self.stopped_at: float | None = None  # monotonic time of the SIGTERM/SIGINT
        self.wake_read, self.wake_write = os.pipe()  # signals and exits wake select()

    def run(self) -> int:
        """Start the workers and look after them until they have stopped; return the exit code."""
        import select

        for fd in (self.wake_read, self.wake_write):
            os.set_blocking(fd, False)
        previous_wakeup = signal.set_wakeup_fd(self.wake_write)
        previous_handlers = {signum: signal.getsignal(signum) for signum in SUPERVISOR_SIGNALS}
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda signum, _: self.signals.append(signum))
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler, so that a worker's exit wakes select()
        try:
            while True:
                self.take_signals()
                for worker in self.workers:
                    if _read_reports(worker):  # it just became ready: starting works again
                        self.failures = 0
                self.reap()
                if self.stopped_at is None:
                    self.balance()
                elif not self.workers:
                    return EXIT_OK
                elif time.monotonic() > self.stopped_at + self.settings.graceful_timeout + WORKER_KILL_GRACE:
                    self.signal_workers(signal.SIGKILL)
                pause = self.next_start - time.monotonic()
                timeout = min(1.0, pause) if pause > 0 else 1.0
                select.select([self.wake_read, *(w.status for w in self.workers if w.status >= 0)], [], [], timeout)
                try:
                    while os.read(self.wake_read, 512):
                        pass
                except BlockingIOError:
                    pass
        finally:
            stop_processes([worker.pid for worker in self.workers])
            for worker in self.workers:
                if worker.status >= 0:
                    os.close(worker.status)
            signal.set_wakeup_fd(previous_wakeup)
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            for fd in (self.wake_read, self.wake_write):
                os.close(fd)
            self.sock.close()

    def take_signals(self) -> None:
        """Act on the signals received: SIGHUP starts a new generation; SIGTERM/SIGINT stop."""
        while self.signals:
            signum = self.signals.pop(0)
            if signum == signal.SIGHUP:
                if self.stopped_at is None:
                    self.generation += 1
                    self.reloading = True
                    info(f"SIGHUP: replacing the {self.wanted} workers one at a time")
                    sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
                continue
            if self.stopped_at is None:
                self.stopped_at = time.monotonic()
                sd_notify("STOPPING=1")
                self.signal_workers(signal.SIGTERM)
                self.sock.close()  # once the workers close theirs too, new connections are refused, not left waiting
            elif signum == signal.SIGINT:  # as with one process, only a second SIGINT forces: systemd may
                self.signal_workers(signal.SIGINT)  # SIGTERM every process of the service; uvicorn's stop-at-once

    def start_worker(self) -> None:
        status_read, status_write = os.pipe()
        inherited = [self.wake_read, self.wake_write, status_read, *(w.status for w in self.workers if w.status >= 0),
                     *(listener.fileno() for listener in _LISTENING)]
        # Signals wait until the worker has its own handlers; Python 3.12+ warns of fork with threads
        # (the binary's thread that watches its launcher), which the worker does not need.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISOR_SIGNALS)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            code = EXIT_FAILURE
            try:
                hushed = any(worker.generation == self.generation for worker in self.workers)
                code = serve_worker(self.settings, self.target, self.sock, status_write, self.pid, inherited, blocked,
                                    hushed)
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        os.close(status_write)
        os.set_blocking(status_read, False)
        self.workers.append(Worker(pid, status_read, self.generation))

    def signal_workers(self, signum: int, chosen: list | None = None) -> None:
        for worker in self.workers if chosen is None else chosen:
            try:
                os.kill(worker.pid, signum)
            except ProcessLookupError:
                pass

    def reap(self) -> None:
        """Collect the workers that have exited."""
        while self.workers:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            for worker in [w for w in self.workers if w.pid == pid]:
                self.worker_exited(worker, status)

    def worker_exited(self, worker: Worker, status: int) -> None:
        self.workers.remove(worker)
        if METRICS_FOLDER:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid, METRICS_FOLDER)  # its gauges no longer count
        _read_reports(worker)
        if worker.status >= 0:
            os.close(worker.status)
        if worker.stopping or self.stopped_at is not None:
            return
        how = _exit_status(status)
        if worker.ready:
            warn(f"worker {worker.pid} {how}; starting another")
            return
        code, message = worker.failure or (EXIT_FAILURE, f"a worker {how} before it was ready")
        if not self.announced:
            raise Error(message, code)  # the worker's own error line and exit code
        self.failures += 1
        delay = min(WORKER_BACKOFF * 2 ** (self.failures - 1), WORKER_MAX_BACKOFF)
        self.next_start = time.monotonic() + delay
        warn(f"a new worker could not start: {message}; trying again in {delay:g} s")

    def balance(self) -> None:
        """Start and retire workers until `wanted` of the newest generation serve."""
        active = [w for w in self.workers if not w.stopping]
        old = [w for w in active if w.generation < self.generation]
        if old and sum(w.ready for w in active) > self.wanted:  # a new one is ready: one old one may go
            old[0].stopping = True
            self.signal_workers(signal.SIGUSR1, [old.pop(0)])  # retire: drain while the others serve on
            active = [w for w in self.workers if not w.stopping]
        if self.reloading and not old:
            self.reloading = False
            info(f"reload: {self.wanted} workers replaced")
            sd_notify("READY=1")
        ready = [w for w in active if w.ready]
        if not self.announced and len(ready) >= self.wanted:
            self.announced = True
            announcer(self.settings, self.sock, self.notes)(ready[0].description)
        missing = self.wanted + (1 if old else 0) - len(active)  # during a reload, one new worker at a time
        if self.failures or old:
            starting = any(not w.ready for w in active if w.generation == self.generation)
            missing = min(missing, 0 if starting else 1)
        if missing > 0 and time.monotonic() >= self.next_start:
            for _ in range(missing):
                self.start_worker()


def run_workers(settings: Settings, target: Target, sock: socket.socket | None) -> int:
    """Serve HTTP from settings.workers processes sharing one listening socket (see Supervisor); with
    metrics, the workers write theirs to a folder of files that a scrape adds up, removed at the end."""
    global METRICS_FOLDER

    if not (settings.metrics or settings.metrics_listen):
        return Supervisor(settings, target, sock).run()
    METRICS_FOLDER = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mcprun-metrics-")
    try:
        if settings.metrics_listen:
            listen_for_scrapes(settings.metrics_listen)
        return Supervisor(settings, target, sock).run()
    finally:
        shutil.rmtree(METRICS_FOLDER, ignore_errors=True)


# -- lifecycle: run, the pipeline --------------------------------------------


def run(settings: Settings) -> int:
    """Resolve, prepare, load and serve; return the exit code."""
    target = resolve_target(settings)
    if settings.reload or settings.workers > 1:
        collect_from_now_on()  # a supervisor: it serves nothing, and its workers start from the fork
    if settings.reload:
        if settings.transport == "sse":
            warn("--reload does not work with SSE (sessions are lost on restart); running without it")
        else:
            return run_with_reload(settings, target)
    settings = meet_requirements(prepare_process(settings, target)).settings
    wire = take_wire() if settings.transport == "stdio" else None
    sock = systemd_socket() if settings.transport != "stdio" else None
    if settings.workers > 1:
        return run_workers(settings, target, sock)
    announce = announcer(settings, sock, ("socket from systemd",)) if sock else None
    launch(settings, target, lambda server, chosen: serve(server, chosen, target, sock, announce, wire))
    return EXIT_OK


# -- sub-commands: check and --print-config ----------------------------------


def not_imported(target: Target) -> str | None:
    """Say how a target mcprun does not import is served (it starts its own server, or is a proxy); else None."""
    if target.kind == "entry_point":
        return (f"console script {target.script.name} ({target.script.value} from {target.script.where}), which "
                "starts its own server: caught and served by mcprun")
    return {"module": f"{target.spec}, a module that starts its own server (-m): caught and served by mcprun",
            "script": f"{target.spec}, a file that starts its own server: caught and served by mcprun",
            "url": f"a proxy to {target.spec}", "mcp_config": f"a proxy to the servers in {target.spec}"}.get(target.kind)


def served_by(settings: Settings) -> str:
    """For --print-config: the server the spec names and the path mcprun serves it by (imports it)."""
    async def stop(server: Any, transport: str, options: dict) -> None:
        raise StartedItself(server)

    try:
        target = resolve_target(settings)
        if described := not_imported(target):
            return described
        prepare_process(settings, target)
        with stdout_to_stderr():
            loaded = start_target(settings, target, Catcher(stop))
    except Error as exc:
        return f"cannot load: {exc}"
    except StartedItself as started:
        return f"{describe_server(started.server, target)}: {server_path(started.server)}, started by its own code"
    if loaded is None:
        return f"{target.spec}: exited without starting a server"
    if inspect.iscoroutinefunction(loaded):
        return f"an async factory in {target.spec} (called when serving)"
    return f"{describe_server(loaded, target)}: {server_path(loaded)}"


async def _list_everything(lowlevel: Any, listed: Any, found: dict) -> None:
    """Run the low-level server on memory streams and fill found through a client session."""
    import anyio
    from mcp import ClientSession
    from mcp.shared.memory import create_client_server_memory_streams

    async with create_client_server_memory_streams() as (client_streams, server_streams):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(lambda: lowlevel.run(*server_streams, lowlevel.create_initialization_options()))
            async with ClientSession(*client_streams) as session:
                started = await session.initialize()
                found["name"], found["version"] = started.server_info.name, started.server_info.version
                found["tools"] = await listed(session.list_tools, "tools")
                found["resources"] = await listed(session.list_resources, "resources")
                found["resource_templates"] = await listed(session.list_resource_templates, "resource_templates")
                found["prompts"] = await listed(session.list_prompts, "prompts")
            tasks.cancel_scope.cancel()


async def inventory(server: Any) -> dict:
    """Ask a server, in memory and through the protocol, for its name, version, tools, resources and prompts."""
    import anyio
    from mcp.shared.exceptions import MCPError

    lowlevel = lowlevel_server_of(server, server_kind(server))
    found: dict = {}

    async def listed(request, field):
        try:
            return [item.model_dump(mode="json", exclude_none=True) for item in getattr(await request(), field)]
        except MCPError:  # the server does not offer this list
            return []

    try:
        with anyio.fail_after(CHECK_TIMEOUT):
            await _list_everything(lowlevel, listed, found)
    except TimeoutError:
        raise Failure(f"the server did not start and list what it offers within {CHECK_TIMEOUT:g} s "
                      "(a lifespan that never finishes starting?)") from None
    keep = {"tools": ("name", "description"), "resources": ("uri", "name", "description"),
            "resource_templates": ("uri_template", "name", "description"), "prompts": ("name", "description")}
    for kind, fields in keep.items():
        found[kind] = [{field: item.get(field) for field in fields} for item in found[kind]]
    return found


def inspect_target(settings: Settings, target: Target) -> tuple[Any, dict]:
    """Load the target as serving would, or run it until it starts its server, and list what the server offers
    (in the code's own event loop, for a server it starts itself); return the server and the list."""
    import anyio

    found: list = []  # kept here too: some code swallows what it runs into (asyncio.gather(return_exceptions))
    settings = dataclasses.replace(settings, policy=None)  # the tools per caller: check() lists them itself

    async def look(server: Any, transport: str, options: dict) -> None:
        narrow_offer(server, settings)
        found.append(StartedItself(server, await inventory(server)))
        raise found[-1]

    catcher = Catcher(look)
    try:
        loaded = start_target(settings, target, catcher)
        if inspect.iscoroutinefunction(loaded):
            loaded = anyio.run(await_factory, loaded, catcher)
        if loaded is not None:
            narrow_offer(loaded, settings)
            return loaded, anyio.run(inventory, loaded)
    except StartedItself:
        pass
    if found:
        return found[0].server, found[0].report
    catcher.raise_failure()
    raise Failure(f"{target.spec} exited without starting a server")


def format_report(report: dict) -> str:
    """Render a check report for people: a verdict, the server, then its tools, resources and prompts."""
    lines = [f"mcprun check: {'ok, it would serve' if report['ok'] else 'it would not serve'}",
             f"spec:     {report['spec']}"]
    if report.get("name") is not None:
        lines.append(f"server:   {report['name']!r} {report.get('version') or ''}".rstrip())
    if report.get("path"):
        lines.append(f"path:     {report['path']}")
    declared = report.get("requirements") or []
    lines.append(f"requires: {', '.join(item['requirement'] for item in declared) or 'nothing declared'}")
    for kind, key in (("tools", "name"), ("resources", "uri"), ("resource templates", "uri_template"),
                      ("prompts", "name")):
        items = report.get(kind.replace(" ", "_"))
        if items is None:
            continue
        lines.append(f"{kind} ({len(items)}):")
        width = max((len(item[key]) for item in items), default=0)
        for item in items:
            summary = ((item.get("description") or "").strip().splitlines() or [""])[0]
            lines.append(f"  {item[key]:<{width}}  {summary}".rstrip())
    if report.get("policy"):
        lines.append("tools per caller (--policy):")
        width = max(len(who) for who in report["policy"])
        for who, tools in report["policy"].items():
            lines.append(f"  {who:<{width}}  {', '.join(tools) or '(none)'}")
    if report.get("error"):
        lines.append(f"error:    {report['error']}")
    return "\n".join(lines)


def tools_per_caller(callers: CallerPolicy, tools: list) -> dict:
    """WHO of each line of a policy file -> the tools a caller it names is offered (with those of '*')."""
    report = {}
    for who, _, _ in callers.rules:
        scopes = (who[6:],) if who.startswith("scope:") else ()
        report[who] = [tool for tool in tools if callers.offers(tool, "" if scopes else who, scopes)]
    return report


def check(settings: Settings, as_json: bool = False) -> int:
    """mcprun check: do everything serving would do up to the first request, then report; 0 if it would serve."""
    report: dict = {"ok": False, "spec": settings.spec}
    try:
        target = resolve_target(settings)
        prepare_process(settings, target)
        declared = declared_requirements(settings, target)
        report["requirements"] = [{"requirement": text, "from": origin} for text, origin in declared.requirements]
        check_requirements(declared, settings, settings.spec if settings.config else target.spec)
        if target.kind in ("url", "mcp_config"):
            report.update(ok=True, path=not_imported(target))
        else:
            with stdout_to_stderr():  # the server's own prints stay out of the report
                server, found = inspect_target(settings, target)
            own = server_dependencies(server)
            report["requirements"] += [{"requirement": text, "from": origin} for text, origin in own.requirements]
            check_requirements(own, settings, target.spec)
            started = f", started by {not_imported(target).split(', which')[0]}" if target.kind in SELF_STARTING else ""
            report.update(found, path=server_path(server) + started, ok=True)
            if settings.policy:
                report["policy"] = tools_per_caller(CallerPolicy(settings.policy), [t["name"] for t in found["tools"]])
    except Error as exc:
        report["error"] = str(exc)
        error(str(exc))
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return EXIT_OK if report["ok"] else EXIT_FAILURE


# -- sub-commands: vendor, a folder of the packages a server needs, made on a connected machine ---
#
# 'mcprun vendor' runs the user's own pip (with the user's index, proxy and configuration) for the
# target machine's Python and wheel tags. To pip, the bundle counts as installed: PIP_WITH_MAPPINGS
# drops every requirement the bundle meets as pip reads it (requirements on mcp and fastmcp count as
# met at any depth, since the mappings serve mcp 1.x and fastmcp 2/3), so pip fetches only what is
# missing; a requirement the bundle does not meet meets the bundle's version as a constraint, and
# pip reports the conflict. What the user names is pinned to its newest release first, so that pip
# never falls back to an older one in silence.

MINIMUM_PIP = (22, 2)  # install --dry-run --report
SERVED_BY_MAPPINGS = ("mcp", "fastmcp")  # requirements on these count as met while the mappings are on


def default_platform() -> str:
    """Return the wheel platform vendor installs for by default: this machine's architecture, glibc 2.28."""
    return f"{DEFAULT_MANYLINUX}_{platform.machine()}"


def platform_ladder(tag: str) -> list[str]:
    """Return every platform tag a machine of tag takes wheels for: manylinux_2_28_x86_64 takes
    manylinux_2_28 down to manylinux_2_17 (manylinux2014) and manylinux1, and linux_x86_64."""
    legacy = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}
    found = LINUX_PLATFORM.fullmatch(tag)
    if not found or found[1] == "linux":
        return [tag]
    arch = found[5]
    if found[4] is not None:  # musllinux_1_2 takes musllinux_1_1 too
        return [f"musllinux_1_{minor}_{arch}" for minor in range(int(found[4]), 0, -1)]
    major, minor = (int(found[2]), int(found[3])) if found[2] else legacy[found[1]]
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    tags += [f"{name}_{arch}" for name, (_, m) in legacy.items() if m <= minor]
    return [*tags, f"linux_{arch}"]


def vendor_requirements(settings: Settings) -> list:
    """Return (requirement, origin) for the vendor command's items: package names or pins, requirements
    files, or a server spec whose declared needs count (fastmcp.json environment, # /// script)."""
    from packaging.requirements import InvalidRequirement, Requirement

    found = []
    for item in (settings.spec, *settings.server_args):
        if item.endswith(".txt"):
            found += read_requirements_file(Path(item), item)
            continue
        if item.endswith((".py", ".json")) or "/" in item or Path(item).is_file():  # a folder NAME: a package
            config = settings.config if item == settings.spec else (
                load_server_config(Path(item)) if item.endswith(".json") and not _is_mcp_config(Path(item)) else None)
            item_settings = dataclasses.replace(settings, spec=item, config=config, with_packages=())
            found += declared_requirements(item_settings, resolve_target(item_settings)).requirements
            continue
        try:
            Requirement(item)
        except InvalidRequirement:
            raise UsageError(f"{item!r} is no package, requirements file or server file to vendor") from None
        found.append((item, "command line"))
    return found + [(text, "--with") for text in settings.with_packages]


def bundle_verdict(requirement: Any, bundle: dict, mapped: tuple) -> str:
    """Say how the bundle meets a requirement: 'absent' (not bundled), 'met', 'mapped' (an older mcp or fastmcp,
    served through the mappings) or 'conflict'. PIP_WITH_MAPPINGS applies the same rule inside pip."""
    from packaging.utils import canonicalize_name

    name = canonicalize_name(requirement.name)
    if name not in bundle:
        return "absent"
    if not requirement.specifier or requirement.specifier.contains(bundle[name], prereleases=True):
        return "met"
    return "mapped" if name in mapped else "conflict"


def served_requirements(resolved: list, bundle: dict, mapped: tuple) -> list[str]:
    """Return the requirements on mcp/fastmcp, of the resolved distributions, that the bundle's versions don't
    meet and the mappings serve: 'mcp<2 (arxiv-mcp-server 0.8.2)'."""
    from packaging.requirements import Requirement

    found = []
    for item in resolved:
        for text in item["metadata"].get("requires_dist") or ():
            requirement = Requirement(text)
            if bundle_verdict(requirement, bundle, mapped) == "mapped" and (
                    requirement.marker is None or requirement.marker.evaluate({"extra": ""})):
                found.append(f"{requirement.name}{requirement.specifier} ({item['metadata']['name']} "
                             f"{item['metadata']['version']})")
    return found


def _pinned(requirement: Any, newest: list | None) -> Any:
    """Return the requirement as it is when it names one release (or a URL); else pinned to the release pip
    picked for it alone in newest (its newest), or None."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    if requirement.url or any(spec.operator in ("==", "===") for spec in requirement.specifier):
        return requirement
    version = next((item["metadata"]["version"] for item in newest or ()
                    if canonicalize_name(item["metadata"]["name"]) == canonicalize_name(requirement.name)), None)
    extras = f"[{','.join(sorted(requirement.extras))}]" if requirement.extras else ""
    marker = f"; {requirement.marker}" if requirement.marker else ""
    return Requirement(f"{requirement.name}{extras}=={version}{marker}") if version else None


def _conflict(said: str) -> str:
    """Return pip's 'The conflict is caused by' lines as one phrase, the bundle's pins named as such."""
    lines = said.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == "The conflict is caused by:"), None)
    if start is None:
        return ""
    causes = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cause = line.strip()
        if found := re.fullmatch(r"The user requested \(constraint\) (\S+)==(\S+)", cause):
            cause = f"the bundle has {found[1]} {found[2]}, which a --pythonpath folder cannot replace"
        causes.append(cause.replace("The user requested ", "you asked for "))
    causes.sort(key=lambda cause: not cause.startswith("the bundle has "))  # what cannot move, named first
    return "; ".join(causes[:4]) + (f" (and {len(causes) - 4} more)" if len(causes) > 4 else "")


def _slow_part(said: str) -> str:
    """Say what pip was busy with when it ran out of time, from its progress lines."""
    looking = list(dict.fromkeys(re.findall(r"pip is looking at multiple versions of (\S+) to determine", said)))
    if looking:
        return (f"it was trying one release after another of {', '.join(looking[:4])}: pin "
                f"{'them' if len(looking) > 1 else 'it'}, e.g. '{looking[0]}==VERSION'")
    collecting = re.findall(r"^Collecting (\S+)", said, re.M)
    last = f"it had got to {collecting[-1]}; " if collecting else ""
    return f"{last}pin what you vendor, e.g. 'NAME==VERSION'"


def find_pip() -> list[str]:
    """Return the command that runs the user's pip: this Python's (source, zipapp), else python3/python on PATH."""
    pythons = [] if this_program().kind == "binary" else [sys.executable]
    pythons += [found for name in ("python3", "python") if (found := shutil.which(name))]
    each: dict = {}
    for python in pythons:  # each Python once, by the first name it has here
        each.setdefault(os.path.realpath(python), python)
    too_old = []
    for python in each.values():
        result = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL)
        version = re.match(r"pip (\d+)\.(\d+)", result.stdout)
        if result.returncode == 0 and version and tuple(map(int, version.groups())) >= MINIMUM_PIP:
            return [python, "-c", PIP_WITH_MAPPINGS]
        if version:
            too_old.append(f"{python} has pip {version[1]}.{version[2]}")
    if too_old:
        raise Failure(f"mcprun vendor needs pip {'.'.join(map(str, MINIMUM_PIP))} or newer ({'; '.join(too_old)}): "
                      f"upgrade it with '{too_old[0].split(' has ')[0]} -m pip install --upgrade pip'")
    raise Failure("mcprun vendor needs pip on this machine (e.g. 'apt install python3-pip'); it runs on a "
                  "connected machine, never on the air-gapped one")


def run_pip(pip: list[str], *args: str, timeout: float | None = None, environment: dict | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    """Run pip in the user's environment (plus environment); with check, turn its failure into one error line
    (its own last error line)."""
    result = subprocess.run([*pip, *args], capture_output=True, text=check, timeout=timeout, stdin=subprocess.DEVNULL,
                            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **(environment or {})})
    if not check:
        return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.decode(errors="replace"),
                                           result.stderr.decode(errors="replace"))
    if result.returncode != 0:
        raise Failure(f"pip {args[0]} failed: {last_error(result.stderr or result.stdout)}")
    return result


def _python_needed(said: str) -> str:
    """Return the Requires-Python of the newest release pip skipped for the target's Python, or ''."""
    from packaging.version import InvalidVersion, Version

    ignored = re.search(r"Ignored the following versions that require a different python version: (.*)", said)
    needs = {}
    for version, python in re.findall(r"(\S+) Requires-Python (\S+?)(?:;|$)", ignored[1] if ignored else ""):
        try:
            needs[Version(version)] = python
        except InvalidVersion:
            pass
    return needs[max(needs)] if needs else ""


def build_pure_wheel(pip: list, requirement: str, built: Path, timeout: float) -> bool:
    """Build a wheel of a release that the index has as source only, here on the connected machine, into built;
    tell whether one was built. Kept only if pure Python (py3-none-any), which runs on any target; else
    Failure, since a wheel with machine code built here fits this machine, not the target."""
    before = set(built.glob("*.whl"))
    try:
        result = run_pip(pip, "wheel", "--no-deps", "--use-pep517", "--quiet", "--wheel-dir", str(built),
                         requirement, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return False
    made = set(built.glob("*.whl")) - before
    if result.returncode != 0 or not made:
        return False
    if not all(path.name.endswith("-none-any.whl") for path in made):
        for path in made:
            path.unlink()
        raise Failure(f"{requirement} has no wheel on the index, and its source release builds machine code: build "
                      "its wheel on a machine like the target, put it in a folder and name that folder in "
                      "PIP_FIND_LINKS")
    return True


def resolve_with_pip(pip: list, options: list, requirements: list, scratch: str, timeout: float,
                     environment: dict, built: Path | None = None) -> list:
    """Run a pip resolution (install --dry-run --report), with environment added to its own and bounded by
    timeout; return the report's install list. With built (a folder of wheels pip also looks in), a release
    the index has as source only is built into it (build_pure_wheel) and the resolution runs again."""
    report = Path(scratch, "report.json")
    for _ in range(MAX_SOURCE_BUILDS + 1):
        report.unlink(missing_ok=True)
        where = ["--find-links", str(built)] if built else []
        try:
            result = run_pip(pip, *options, *where, "--report", str(report), *map(str, requirements),
                             timeout=timeout, environment=environment, check=False)
        except subprocess.TimeoutExpired as exc:
            said = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
            raise Failure(f"pip did not resolve {' '.join(map(str, requirements))} within {timeout:g} s "
                          f"({_slow_part(said)}); or give it longer with --resolve-timeout SECONDS") from None
        if result.returncode == 0:
            return json.loads(report.read_text())["install"]
        said = result.stdout + result.stderr
        source_only = re.search(r"No matching distribution found for (\S+)", said)
        if source_only and (python := _python_needed(said)):
            raise Failure(f"{source_only[1]} has no release for CPython {options[options.index('--python-version') + 1]}"
                          f": its newest needs Python {python}; vendor for a Python that fits with --python-version "
                          "X.Y, and run mcprun.pyz with that Python (the zipapp runs on CPython 3.11 to 3.13)")
        if not (built and source_only and build_pure_wheel(pip, source_only[1], built, timeout)):
            break
    conflict = _conflict(said)
    if conflict:
        raise Failure(f"cannot vendor {' '.join(map(str, requirements))}: {conflict}")
    raise Failure(f"pip install failed: {last_error(said)}")


def _what_fits(pip: list, resolve: list, constraints: Path, wanted: list, pinned: list, scratch: str, timeout: float,
               beside: dict) -> str:
    """After a conflict at the newest releases: say which older release of what the user named would fit."""
    if [str(r) for r in wanted] == [str(r) for r in pinned]:
        return ""
    try:
        fits = resolve_with_pip(pip, [*resolve, "--constraint", str(constraints)], wanted, scratch, timeout, beside)
    except Error:
        return ""
    older = [f"{item['metadata']['name']}=={item['metadata']['version']}" for item in fits
             if item.get("requested") and all(str(r) != f"{item['metadata']['name']}=={item['metadata']['version']}"
                                               for r in pinned)]
    return f"; an older release would fit: vendor {' '.join(repr(pin) for pin in older)}" if older else ""


def install_with_pip(wanted: list, folder: Path, python_version: str, tags: list, bundle: dict, mapped: tuple,
                     timeout: float) -> tuple[list, dict]:
    """Resolve wanted with the user's pip for the target, around the bundle, and install the result into folder
    (no dependency the bundle has); return pip's report of what was installed and {name: (wheel, sha256)}."""
    from packaging.utils import canonicalize_name

    pip = find_pip()
    target = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp",
              *[option for tag in tags for option in ("--platform", tag)]]
    beside = {"MCPRUN_BUNDLE": json.dumps({"versions": bundle, "extras": bundled_extras(), "mapped": mapped})}
    with tempfile.TemporaryDirectory(prefix="mcprun-vendor-") as scratch:
        constraints = bundle_constraints(scratch, bundle)
        built = Path(scratch, "built")  # wheels built here of releases the index has as source only
        built.mkdir()
        resolve = ["install", "--dry-run", "--ignore-installed", "--target", str(Path(scratch, "unused")), *target]
        unpinned = [requirement for requirement in wanted if _pinned(requirement, None) is None]
        newest = resolve_with_pip(pip, [*resolve, "--no-deps"], unpinned, scratch, timeout, beside,
                                  built) if unpinned else []
        pinned = [_pinned(requirement, newest) or requirement for requirement in wanted]
        try:
            resolved = resolve_with_pip(pip, [*resolve, "--constraint", str(constraints)], pinned, scratch, timeout,
                                        beside, built)
        except Error as exc:
            raise type(exc)(f"{exc}{_what_fits(pip, resolve, constraints, wanted, pinned, scratch, timeout, beside)}"
                            ) from None
        resolved = [item for item in resolved if canonicalize_name(item["metadata"]["name"]) not in bundle]
        wheels = Path(scratch, "wheels")
        pins = [f"{item['metadata']['name']}=={item['metadata']['version']}" for item in resolved]
        run_pip(pip, "download", "--no-deps", "--quiet", "--dest", str(wheels), "--find-links", str(built), *target,
                *pins)
        run_pip(pip, "install", "--no-deps", "--no-index", "--quiet", "--upgrade", "--find-links", str(wheels),
                "--target", str(folder), *target, *pins)
        found = {canonicalize_name(path.name.split("-")[0]): (path.name, hashlib.sha256(path.read_bytes()).hexdigest())
                 for path in wheels.glob("*.whl")}
        for item in resolved:
            item["mcprun_built"] = Path(built, found.get(canonicalize_name(item["metadata"]["name"]), ("?",))[0]).is_file()
        return resolved, {item["metadata"]["name"]: found.get(canonicalize_name(item["metadata"]["name"]), ("?", "?"))
                          for item in resolved}


def vendor(settings: Settings, output: str, python_version: str | None, platform_tag: str | None,
           resolve_timeout: float | None = None) -> int:
    """mcprun vendor: install what the named packages or server need, and the bundle lacks, into a folder."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    if not output:
        raise UsageError("mcprun vendor needs -o DIR, the folder to fill")
    declared = vendor_requirements(settings)
    python_version = python_version or "%d.%d" % sys.version_info[:2]
    platform_tag = platform_tag or default_platform()
    bundle = bundled_distributions()
    mapped = SERVED_BY_MAPPINGS if settings.compat else ()
    wanted, served, conflicts = [], [], []
    for text, origin in declared:
        requirement = Requirement(text)
        verdict = bundle_verdict(requirement, bundle, mapped)
        if verdict == "absent":
            wanted.append(requirement)
            continue
        if verdict == "mapped":
            served.append(f"{text} ({origin})")
        elif verdict == "conflict":
            conflicts.append(f"{text} ({origin}; the bundle has {requirement.name} "
                             f"{bundle[canonicalize_name(requirement.name)]})")
        if requirement.extras:  # the packages its extras add
            wanted.append(Requirement(f"{requirement.name}[{','.join(sorted(requirement.extras))}]"))
    if conflicts:
        raise Failure(f"cannot vendor {', '.join(conflicts)}: a --pythonpath folder never replaces bundled "
                      "packages")
    folder = Path(output)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    resolved, wheels = [], {}
    if wanted:
        try:
            resolved, wheels = install_with_pip(wanted, folder, python_version, platform_ladder(platform_tag),
                                                bundle, mapped, resolve_timeout or DEFAULT_RESOLVE_TIMEOUT)
        except BaseException:
            if made:  # no empty or half-filled folder left behind
                shutil.rmtree(folder, ignore_errors=True)
            raise
    served += served_requirements(resolved, bundle, mapped)
    lines = [f"# made by mcprun {__version__} vendor: packages for --pythonpath, beside the bundle",
             f"python {python_version}", f"platform {platform_tag}"]
    lines += [f"{item['metadata']['name']} {item['metadata']['version']} sha256={wheels[item['metadata']['name']][1]} "
              f"{wheels[item['metadata']['name']][0]}" for item in resolved]
    (folder / MANIFEST).write_text("\n".join(lines) + "\n")
    named = [f"{item['metadata']['name']} {item['metadata']['version']}" for item in resolved if item.get("requested")]
    others = [f"{item['metadata']['name']} {item['metadata']['version']}" for item in resolved if not item.get("requested")]
    shown = ", ".join(others[:8]) + (f" and {len(others) - 8} more" if len(others) > 8 else "")
    what = ", ".join(named) or (shown if others else "nothing (the bundle has it all)")
    if named and others:
        what += f" and {len(others)} package{'s' if len(others) > 1 else ''} {'they' if len(named) > 1 else 'it'} " \
                f"need{'' if len(named) > 1 else 's'} ({shown})"
    sourced = [f"{item['metadata']['name']} {item['metadata']['version']}" for item in resolved if item.get("mcprun_built")]
    notes = (f"; served by mcprun's mappings, not vendored: {', '.join(dict.fromkeys(served))}" if served else "") + (
        f"; built here from source releases (pure Python): {', '.join(sourced)}" if sourced else "")
    info(f"vendored {what} into {folder} for CPython {python_version} on {platform_tag}{notes}")
    return EXIT_OK


# -- sub-commands: pack, one zipapp carrying the runner, a server and what it needs ---

PACK_FOLDER = "mcprun_pack/"  # inside the zipapp: pack.json, server/ (the server's folder), deps/ (vendored)
PACK_SKIPPED = {"__pycache__", ".git", ".venv", "venv", ".mypy_cache", ".pytest_cache", "node_modules"}


def artifact_name(machine: str) -> str:
    """Return the name of the artifacts built for machine: mcprun (x86_64), mcprun-aarch64, ...
    (packaging/pyz_main.py's artifact(), which runs before this module can be imported, says the same)."""
    return "mcprun" if machine == "x86_64" else f"mcprun-{machine}"


def find_zipapp(machine: str) -> Path:
    """Return the zipapp a pack for machine builds on: this one if it is that machine's, else mcprun.pyz
    (x86_64) or mcprun-MACHINE.pyz named by MCPRUN_PYZ, beside this mcprun or in its dist/ folder."""
    program = this_program()
    if program.kind == "zipapp" and machine == platform.machine():
        return program.path
    name = artifact_name(machine) + ".pyz"
    here = program.path.resolve().parent  # the binary's own folder, not its unpacked copy
    for candidate in (os.environ.get("MCPRUN_PYZ"), here / name, here / "dist" / name):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    if machine != platform.machine():
        raise UsageError(f"mcprun pack for {machine} builds on {name}, the zipapp for that machine: put it beside "
                         "this mcprun (or name it with MCPRUN_PYZ)")
    raise UsageError("mcprun pack builds on mcprun.pyz: run 'python3 mcprun.pyz pack ...', or put mcprun.pyz "
                     "beside this mcprun (or name it with MCPRUN_PYZ)")


def pack(settings: Settings, output: str, python_version: str | None, platform_tag: str | None,
         resolve_timeout: float | None = None) -> int:
    """mcprun pack: copy mcprun.pyz and add the server's folder (or the package named) and its vendored packages."""
    import zipfile

    if not output:
        raise UsageError("mcprun pack needs -o FILE, the zipapp to write")
    spec = settings.spec or ""
    named = not settings.config and not (spec.endswith(".py") or "/" in spec or ":" in spec or Path(spec).is_file())
    root = None
    if not named:
        target = resolve_target(settings)
        if target.kind not in ("file", "script") and not settings.config:
            raise UsageError(f"mcprun pack takes a server file, fastmcp.json or a package, not {target.kind} "
                             f"{target.spec!r}")
        entry = Path(os.path.abspath(spec.split(":")[0] if settings.config else target.path))
        root = _package_root(entry)[0] if (entry.parent / "__init__.py").exists() else entry.parent
        if settings.config and not Path(target.path).resolve().is_relative_to(root.resolve()):
            raise UsageError(f"{spec}: the server {target.path} lies outside the config's folder; "
                             "pack a folder that holds both")
        spec = str(entry.relative_to(root)) + (f":{target.object_name}" if target.object_name and not settings.config
                                               else "")
    base = find_zipapp(platform_machine(platform_tag or default_platform()))
    output_path = Path(output).resolve()
    with tempfile.TemporaryDirectory(prefix="mcprun-pack-") as scratch:
        deps = Path(scratch, "deps")
        vendor(settings, str(deps), python_version, platform_tag, resolve_timeout)
        files = [] if root is None else [
            (path, f"server/{path.relative_to(root)}") for path in sorted(root.rglob("*"))
            if path.is_file() and path != output_path and not PACK_SKIPPED & set(path.relative_to(root).parts)]
        files += [(path, f"deps/{path.relative_to(deps)}") for path in sorted(deps.rglob("*")) if path.is_file()]
        manifest = {"spec": spec}
        if named:  # run by its console script, found in the packed packages
            from packaging.requirements import Requirement

            script = find_console_script(Requirement(spec).name, console_scripts((str(deps),)))
            if script is None:
                raise UsageError(f"{spec} has no console script to run; pack a server file that imports it")
            manifest = {"script": script.name}
            spec = script.name
        digest = hashlib.sha256()
        for path, name in files:
            digest.update(name.encode() + b"\0" + path.read_bytes())
        manifest.update(id=digest.hexdigest()[:16], mcprun=__version__)
        shutil.copyfile(base, output_path)
        with zipfile.ZipFile(output_path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(PACK_FOLDER + "pack.json", json.dumps(manifest))
            for path, name in files:
                archive.write(path, PACK_FOLDER + name)
    output_path.chmod(0o755)
    size = output_path.stat().st_size / 1e6
    source = f"from {_short_path(root)} " if root else ""
    info(f"packed {spec} {source}({len(files)} files) into {_short_path(output_path)} "
         f"({size:.1f} MB): run it with 'python3 {_short_path(output_path)} [options]'")
    return EXIT_OK


def unpack_packed_server(argv: list[str]) -> list[str]:
    """In a packed zipapp: unpack its server once and return argv with the server and its packages added."""
    program = this_program()
    if program.kind != "zipapp" or os.environ.get("MCPRUN_PACKED"):
        return argv
    with shiv_archive(program.path) as archive:
        try:
            manifest = json.loads(archive.read(PACK_FOLDER + "pack.json"))
        except KeyError:
            return argv
        root = Path(os.environ.get("SHIV_ROOT") or tempfile.gettempdir())  # pyz_main.py's: where the zipapp unpacked
        folder = root / f"mcprunpack-{manifest['id']}"
        if not (folder / ".complete").exists():
            scratch = Path(tempfile.mkdtemp(prefix=f".mcprunpack-{manifest['id']}-", dir=root))
            for name in archive.namelist():
                if name.startswith(PACK_FOLDER) and not name.endswith("/") and name != PACK_FOLDER + "pack.json":
                    archive.extract(name, scratch)
            (scratch / PACK_FOLDER / ".complete").touch()
            try:
                os.rename(scratch / PACK_FOLDER, folder)
            except OSError:  # another start unpacked it first
                pass
            shutil.rmtree(scratch, ignore_errors=True)
    os.environ["MCPRUN_PACKED"] = "1"  # a reloaded child gets its argv as it is
    command = argv[:1] if argv[:1] and argv[0] in COMMANDS else []
    added = [manifest["script"]] if "script" in manifest else [str(folder / "server" / manifest["spec"])]
    if (folder / "deps").is_dir():
        added += ["--pythonpath", str(folder / "deps")]
    return [*command, *added, *argv[len(command):]]


# -- main --------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the mcprun command line; return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    program = this_program()
    program.start()
    argv = unpack_packed_server(argv)
    if program.kind == "binary" and argv[:1] == ["-c"]:  # the binary is the Python of the servers it runs
        return run_python_code(argv[1:])
    program.restore_child_environment()
    gc.disable()  # until serving starts (collect_from_now_on)
    args = parse_command_line(argv)
    if args.version:
        print(version_line())
        return EXIT_OK
    level, log_format = requested_logging(args, os.environ)
    configure_logging(level, log_format)  # again once the server's stack is imported (prepare_process)
    debug = level == "DEBUG"
    try:
        settings = load_settings(args, os.environ)
        if settings.print_config:
            print(format_settings(settings, served=served_by(settings)))
            return EXIT_OK
        if args.command == "check":
            return check(settings, as_json=args.json)
        if args.command == "vendor":
            return vendor(settings, args.output, args.python_version, args.platform, args.resolve_timeout)
        if args.command == "pack":
            return pack(settings, args.output, args.python_version, args.platform, args.resolve_timeout)
        return run(settings)
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as raised:
        code, message = describe_failure(raised, debug)
        error(message)
        return code
if __name__ == "__main__":
    sys.exit(main())
