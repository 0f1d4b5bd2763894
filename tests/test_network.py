"""No surprise network: mcprun dials nothing on its own, only the URLs the user gives it."""

import json
import os
import re
import signal
import shutil
import subprocess

import pytest
from helpers import (
    INITIALIZE, INITIALIZED, READY, SERVERS, child_env, exercise_fastmcp, mcprun_command, pids_with_token,
    run_async, serving, stdio_exchange, tools_call,
)

CLOSED_PROXY = "http://127.0.0.1:9"  # discard port: nothing listens there
PROXY_ENV = {"HTTP_PROXY": CLOSED_PROXY, "HTTPS_PROXY": CLOSED_PROXY, "ALL_PROXY": CLOSED_PROXY,
             "http_proxy": CLOSED_PROXY, "https_proxy": CLOSED_PROXY}
EXCHANGE = [INITIALIZE, INITIALIZED, tools_call(2, "echo", {"text": "offline"})]
needs_strace = pytest.mark.skipif(not shutil.which("strace"), reason="strace not installed")
needs_unshare = pytest.mark.skipif(not shutil.which("unshare"), reason="unshare not installed")


def inet_connects(trace: str) -> list[str]:
    """Return the connect() calls to IPv4/IPv6 addresses in an strace log."""
    return [line for line in trace.splitlines() if "connect(" in line and re.search(r"AF_INET6?\b", line)]


def assert_echoed(stdout: str) -> None:
    replies = [json.loads(line) for line in stdout.splitlines()]
    assert replies[-1]["result"]["content"][0]["text"] == "offline"


@needs_strace
@pytest.mark.parametrize("spec", ["fastmcp_server.py", "sdk_server.py"])
def test_stdio_server_makes_no_connection(token, tmp_path, spec):
    log = tmp_path / "strace.log"
    result = stdio_exchange(["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(log),
                             *mcprun_command(), spec], EXCHANGE, token, cwd=SERVERS,
                            env=child_env(token, **PROXY_ENV))
    assert result.returncode == 0, result.stderr
    assert_echoed(result.stdout)
    assert inet_connects(log.read_text()) == []


@needs_unshare
def test_stdio_server_runs_with_no_network_at_all(token):
    result = stdio_exchange(["unshare", "--net", *mcprun_command(), "fastmcp_server.py"], EXCHANGE, token,
                            cwd=SERVERS, env=child_env(token, **PROXY_ENV))
    if result.returncode != 0 and "unshare failed" in result.stderr:
        pytest.skip("this machine forbids network namespaces")
    assert result.returncode == 0, result.stderr
    assert_echoed(result.stdout)


@needs_strace
def test_url_proxy_connects_only_to_the_given_url(token, tmp_path):
    with serving(token, "fastmcp_server.py", cwd=SERVERS) as upstream:
        port = int(re.search(r":(\d+)/", upstream.url)[1])
        log = tmp_path / "strace.log"
        result = stdio_exchange(["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(log),
                                 *mcprun_command(), upstream.url], EXCHANGE, token, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_echoed(result.stdout)
    connects = inet_connects(log.read_text())
    assert connects, "the proxy never reached its upstream"
    for line in connects:
        assert f"sin_port=htons({port})" in line and "127.0.0.1" in line, line


@needs_strace
def test_http_server_makes_no_outbound_connection(token, tmp_path):
    log = tmp_path / "strace.log"
    command = ["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(log), *mcprun_command(),
               "fastmcp_server.py", "-t", "http", "-p", "0"]
    process = subprocess.Popen(command, cwd=SERVERS, env=child_env(token, **PROXY_ENV),
                               stderr=subprocess.PIPE, text=True)
    try:
        url = None
        for line in process.stderr:  # bounded: the harness kills the process by token at the end
            if match := READY.match(line):
                url = match["url"]
                break
        assert url, "no ready line"
        assert run_async(exercise_fastmcp(url))["echo"] == "hi"
    finally:
        for pid in pids_with_token(token):  # stop mcprun itself; strace exits with its tracee
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not f.read().startswith(b"strace"):
                    os.kill(pid, signal.SIGTERM)
        process.wait(30)
    assert inet_connects(log.read_text()) == []
