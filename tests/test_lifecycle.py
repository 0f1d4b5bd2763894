"""Lifecycle: signals stop a server promptly and free its port; --reload restarts on change."""

import re
import signal
import socket
import time

import pytest
from helpers import READY, SERVERS, exercise_fastmcp, run_async, serving

TOOL_SOURCE = '''
from fastmcp import FastMCP

mcp = FastMCP("Reloadable")


@mcp.tool
def {name}() -> str:
    return "{name}"
'''


def port_of(url: str) -> int:
    return int(re.search(r":(\d+)/", url)[1])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("transport", ["http", "sse"])
def test_signal_stops_http_server_promptly_and_frees_port(token, transport, signum):
    with serving(token, "fastmcp_server.py", transport=transport, cwd=SERVERS) as server:
        assert run_async(exercise_fastmcp(server.url))["echo"] == "hi"
        started = time.monotonic()
        server.process.send_signal(signum)
        assert server.process.wait(15) == 0, server.stderr
        elapsed = time.monotonic() - started
        with socket.socket() as probe:  # the port is free again, for a server binding it as mcprun does
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT connections don't count
            probe.bind(("127.0.0.1", port_of(server.url)))
    assert elapsed < 15


def wait_for_ready_lines(server, count: int, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        urls = [m["url"] for line in list(server.lines) if (m := READY.match(line))]
        if len(urls) >= count:
            return urls[-1]
        assert server.process.poll() is None, server.stderr
        time.sleep(0.1)
    raise AssertionError(f"no ready line #{count} in {timeout}s:\n{server.stderr}")


def test_reload_restarts_on_change(token, tmp_path):
    server_file = tmp_path / "server.py"
    server_file.write_text(TOOL_SOURCE.format(name="before"))
    with serving(token, str(server_file), "--reload", cwd=tmp_path) as server:
        from fastmcp import Client

        async def tool_names(url):
            async with Client(url) as client:
                return [tool.name for tool in await client.list_tools()]

        assert run_async(tool_names(server.url)) == ["before"]
        server_file.write_text(TOOL_SOURCE.format(name="after"))
        url = wait_for_ready_lines(server, 2)
        assert run_async(tool_names(url)) == ["after"]
        assert "reload: server.py changed; restarting" in server.stderr or "changed; restarting" in server.stderr
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(15) == 0


def test_reload_passes_server_args_once(token):
    """Positional and after-'--' server args reach the reloaded server exactly once."""
    from helpers import exercise_fastmcp, started

    with started(token, "fastmcp_server.py", "first", "--reload", "-t", "http", "-p", "0", "--", "--second",
                 cwd=SERVERS) as server:
        assert run_async(exercise_fastmcp(server.url))["argv"] == "first --second"
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(15) == 0
