"""The test suite's helpers: run the real mcprun as a subprocess and talk to it with real MCP clients.

MCPRUN_UNDER_TEST chooses the program (default: this checkout's mcprun.py under
the running Python), e.g. MCPRUN_UNDER_TEST=dist/mcprun or "python3 dist/mcprun.pyz".
Every process a test starts carries a per-test token in its environment and is
killed by that token when the test ends, however it was started.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
SERVERS = ROOT / "tests" / "servers"
EXAMPLES = ROOT / "examples"
TOKEN_VARIABLE = "MCPRUN_TEST_TOKEN"
# An artifact for another machine runs under emulation (qemu), some ten times slower: ./build sets
# MCPRUN_TEST_SLOWDOWN for it, and the helpers' deadlines stretch by that factor.
SLOWDOWN = float(os.environ.get("MCPRUN_TEST_SLOWDOWN", "1"))
START_TIMEOUT = 60.0 * SLOWDOWN  # seconds for a server to print its ready line (artifacts extract on first run)
CALL_TIMEOUT = 60.0 * SLOWDOWN  # seconds for one client session, start to finish
READY = re.compile(r"^mcprun: ready: .* at (?P<url>https?://\S+)")


def mcprun_command() -> list[str]:
    """Return the command that runs the mcprun under test."""
    under_test = os.environ.get("MCPRUN_UNDER_TEST")
    if under_test:  # relative paths made absolute: tests run servers from other folders
        return [os.path.abspath(part) if "/" in part and os.path.exists(part) else part
                for part in shlex.split(under_test)]
    return [sys.executable, str(ROOT / "mcprun.py")]


_UNDER_TEST_RUNS_ON: list = []


def under_test_runs_on() -> tuple[str, str]:
    """Return the Python ('3.11') and machine ('x86_64', 'aarch64') the mcprun under test runs on, from its
    --version line: an artifact for another machine runs here under emulation, and has its own Python."""
    if not _UNDER_TEST_RUNS_ON:
        line = subprocess.run([*mcprun_command(), "--version"], capture_output=True, text=True, timeout=120,
                              check=True).stdout
        found = re.search(r"Python (\d+\.\d+)\.\S*, Linux-(\w+)\)", line)
        assert found, line
        _UNDER_TEST_RUNS_ON.extend(found.groups())
    return _UNDER_TEST_RUNS_ON[0], _UNDER_TEST_RUNS_ON[1]


# -- process bookkeeping ------------------------------------------------------


def pids_with_token(token: str) -> list[int]:
    """Return the PIDs of live processes whose environment carries token."""
    needle = f"{TOKEN_VARIABLE}={token}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def kill_token(token: str) -> None:
    """SIGKILL every process carrying token, until none is left (bounded)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        pids = pids_with_token(token)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def child_env(token: str, **extra: str) -> dict:
    """Return os.environ plus the test token and extra variables."""
    env = {**os.environ, TOKEN_VARIABLE: token, **extra}
    env.pop("MCPRUN_LOG_LEVEL", None)
    return env


# -- running mcprun -----------------------------------------------------------


def run_cli(token: str, *args: str, cwd=None, env=None, timeout=60, input=None) -> subprocess.CompletedProcess:
    """Run mcprun to completion and return the result (text)."""
    return subprocess.run(
        [*mcprun_command(), *args], cwd=cwd, env=env or child_env(token), input=input,
        capture_output=True, text=True, timeout=timeout * SLOWDOWN,
    )


def error_line(result, code: int, *fragments: str, warnings: int = 0, report: bool = False) -> str:
    """Check a failed run: exit code, stderr is one error line (after `warnings` warning lines), stdout
    empty (but for a report: mcprun check's); return the line, which holds each fragment."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert report or result.stdout == "", result.stdout
    assert len(lines) == warnings + 1, result.stderr
    assert all(line.startswith("mcprun: warning: ") for line in lines[:-1]), result.stderr
    assert lines[-1].startswith("mcprun: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], f"{fragment!r} not in {lines[-1]!r}"
    return lines[-1]


def usage_error(result, *fragments: str) -> str:
    """Check an argparse rejection: exit 2, the usage line, then one error line holding each fragment."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 2 and lines[0].startswith("usage: mcprun "), result.stderr
    assert lines[-1].startswith("mcprun: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], f"{fragment!r} not in {lines[-1]!r}"
    return lines[-1]


def wait_for(predicate, timeout: float = 60, interval: float = 0.05, what: str = "condition"):
    """Poll predicate until it returns something true (returned), or fail after timeout seconds."""
    deadline = time.monotonic() + timeout * SLOWDOWN
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not met in {timeout}s")


def ready_line_of_json(line: str) -> str:
    """Return a --log-format json line from mcprun as its text form ('mcprun: MESSAGE'), else ''."""
    if not line.startswith("{"):
        return ""
    try:
        entry = json.loads(line)
    except ValueError:
        return ""
    return f"mcprun: {entry.get('message', '')}" if entry.get("logger") == "mcprun" else ""


class RunningServer:
    """An mcprun process serving HTTP or SSE, with its stderr collected in the background."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.lines: list[str] = []
        self.url: str | None = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line)
            match = READY.match(line) or READY.match(ready_line_of_json(line))
            if match and not self._ready.is_set():
                self.url = match["url"]
                self._ready.set()
        self._ready.set()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> str:
        if not self._ready.wait(timeout) or self.url is None:
            raise AssertionError(f"mcprun did not become ready in {timeout}s; stderr:\n{self.stderr}")
        return self.url

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, wait, then SIGKILL; return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        self._reader.join(timeout)
        return self.process.returncode


@contextlib.contextmanager
def started(token: str, *args: str, cwd=None, env=None, preexec_fn=None):
    """Start mcprun with exactly args (no --transport/--port added); yield the RunningServer once ready.

    For settings that come from fastmcp.json or MCPRUN_* variables, which serving()'s flags would override.
    """
    process = subprocess.Popen(
        [*mcprun_command(), *args], cwd=cwd, env=env or child_env(token), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn,
    )
    server = RunningServer(process)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
        kill_token(token)


@contextlib.contextmanager
def serving(token: str, *args: str, transport: str = "http", cwd=None, env=None, preexec_fn=None):
    """Start mcprun on a free loopback port; yield the RunningServer once it is ready."""
    with started(token, *args, "--transport", transport, "--port", "0", cwd=cwd, env=env,
                 preexec_fn=preexec_fn) as server:
        yield server


# -- clients ------------------------------------------------------------------


def run_async(coroutine, timeout: float = CALL_TIMEOUT):
    """Run a client coroutine to completion, bounded in time."""
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


def stdio_transport(token: str, *args: str, cwd=None, env=None):
    """Return a fastmcp StdioTransport that starts mcprun with args."""
    from fastmcp.client.transports import StdioTransport

    command = mcprun_command()
    return StdioTransport(command[0], [*command[1:], *args], env=env or child_env(token), cwd=cwd,
                          keep_alive=False)


async def exercise_fastmcp(target) -> dict:
    """Run the demo checks through fastmcp's Client; return what came back."""
    from fastmcp import Client

    async with Client(target) as client:
        tools = sorted(tool.name for tool in await client.list_tools())
        echoed = await client.call_tool("echo", {"text": "hi"})
        argv = await client.call_tool("argv", {})
        resource = await client.read_resource("demo://greeting")
        prompt = await client.get_prompt("summarize", {"topic": "tides"})
    return {
        "tools": tools,
        "echo": echoed.content[0].text,
        "argv": argv.content[0].text if argv.content else "",
        "resource": resource[0].text,
        "prompt": prompt.messages[0].content.text,
    }


@contextlib.asynccontextmanager
async def sdk_session(kind: str, target, token: str | None = None):
    """Yield an initialized official-SDK ClientSession over stdio, http or sse.

    target is an mcprun argument list for stdio, a URL otherwise.
    """
    from mcp import ClientSession

    if kind == "stdio":
        from mcp.client.stdio import StdioServerParameters, stdio_client

        command = mcprun_command()
        params = StdioServerParameters(command=command[0], args=[*command[1:], *target],
                                       env={TOKEN_VARIABLE: token, "PATH": os.environ["PATH"]})
        streams = stdio_client(params, errlog=open(os.devnull, "w"))
    elif kind == "http":
        from mcp.client.streamable_http import streamable_http_client

        streams = streamable_http_client(target)
    else:
        from mcp.client.sse import sse_client

        streams = sse_client(target)
    async with streams as (read_stream, write_stream, *_):
        async with ClientSession(read_stream, write_stream) as session:
            await session.initialize()
            yield session


async def exercise_sdk(kind: str, target, token: str | None = None) -> dict:
    """Run the demo checks through the official SDK client; return what came back."""
    async with sdk_session(kind, target, token) as session:
        tools = sorted(tool.name for tool in (await session.list_tools()).tools)
        echoed = await session.call_tool("echo", {"text": "hi"})
        argv = await session.call_tool("argv", {})
        resource = await session.read_resource("demo://greeting")
        prompt = await session.get_prompt("summarize", {"topic": "tides"})
    return {
        "tools": tools,
        "echo": echoed.content[0].text,
        "argv": argv.content[0].text if argv.content else "",
        "resource": resource.contents[0].text,
        "prompt": prompt.messages[0].content.text,
    }


DEMO_RESULT = {
    "tools": ["argv", "echo"],
    "echo": "hi",
    "argv": "",
    "resource": "Hello from demo",
    "prompt": "Summarize tides briefly.",
}


# -- raw protocol over stdio --------------------------------------------------

INITIALIZE = {
    "jsonrpc": "2.0", "id": 1, "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {},
               "clientInfo": {"name": "mcprun-tests", "version": "1"}},
}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}


def tools_call(request_id: int, name: str, arguments: dict) -> dict:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
            "params": {"name": name, "arguments": arguments}}


def stdio_exchange(command: list[str], messages: list[dict], token: str, cwd=None, env=None,
                   timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Talk JSON-RPC to a stdio server as a client would, then close its stdin (within timeout x SLOWDOWN s).

    Each request waits for its response before the next message is sent; a bytes
    message is written as a raw line (garbage, for fault tests) and waits for nothing.
    The server must exit on end of input; its stdout is returned unparsed, so tests
    can check that nothing but protocol reached it.
    """
    import json
    import queue

    deadline = time.monotonic() + timeout * SLOWDOWN
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=cwd, env=env or child_env(token))
    lines: queue.Queue = queue.Queue()
    stdout: list[str] = []
    stderr: list[str] = []
    readers = [threading.Thread(target=lambda: [lines.put(line.decode("utf-8", "replace")) for line in process.stdout]
                                + [lines.put(None)], daemon=True),
               threading.Thread(target=lambda: stderr.extend(line.decode("utf-8", "replace")
                                                             for line in process.stderr), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        for message in messages:
            process.stdin.write((message if isinstance(message, bytes) else json.dumps(message).encode()) + b"\n")
            process.stdin.flush()
            while isinstance(message, dict) and "id" in message:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                if line is None:
                    break
                stdout.append(line)
                with contextlib.suppress(ValueError):
                    if json.loads(line).get("id") == message["id"]:
                        break
        process.stdin.close()
        process.wait(max(0.1, deadline - time.monotonic()))
    except (queue.Empty, subprocess.TimeoutExpired, BrokenPipeError):
        process.kill()
        process.wait()
    for reader in readers:
        reader.join(5)
    while not lines.empty():
        line = lines.get()
        if line is not None:
            stdout.append(line)
    return subprocess.CompletedProcess(command, process.returncode, "".join(stdout), "".join(stderr))


# -- added for test_spec.py and test_config.py --------------------------------


def free_port() -> int:
    """Return a TCP port that was free on 127.0.0.1 a moment ago (for servers that can't bind 0)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
