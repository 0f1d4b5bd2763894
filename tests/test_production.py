"""Production serving over HTTP: auth, Host/Origin checks, CORS, health, graceful shutdown, limits, faults,
logs and a bounded load, through real clients on loopback; stdio faults and end of input."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from helpers import (INITIALIZE, INITIALIZED, ROOT, SERVERS, child_env, error_line,
                      mcprun_command, run_async, run_cli, serving, started, stdio_exchange, tools_call, wait_for)

PRODUCTION = "production_server.py"
TOKEN = "t0ken-for-tests_0123456789"
MCP1_PYTHON = ROOT / ".venv-mcp1" / "bin" / "python"
MCP1_CLIENT = ROOT / "tests" / "clients" / "mcp1_client.py"
BOTH = pytest.mark.parametrize("transport", ["http", "sse"])
STREAM_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def endpoint(server, transport: str) -> str:
    return server.url


def client(url: str, token: str | None = None, **options):
    from fastmcp import Client

    return Client(url, auth=token, **options)


async def call(url: str, tool: str, arguments: dict, token: str | None = None):
    async with client(url, token) as session:
        return await session.call_tool(tool, arguments, raise_on_error=False)


def text_of(result) -> str:
    return result.content[0].text


def initialize_request(url: str, headers: dict | None = None) -> httpx.Response:
    """POST an initialize to a streamable HTTP endpoint; return the response (body read)."""
    return httpx.post(url, json=INITIALIZE, headers={**STREAM_HEADERS, **(headers or {})}, timeout=10)


def open_sse(url: str, headers: dict | None = None) -> int:
    """GET an SSE endpoint; return the status code (the stream is closed at once)."""
    with httpx.stream("GET", url, headers={"accept": "text/event-stream", **(headers or {})}, timeout=10) as response:
        return response.status_code


def first_request_status(transport: str, url: str, headers: dict | None = None) -> int:
    return initialize_request(url, headers).status_code if transport == "http" else open_sse(url, headers)


def process_tree_rss(pid: int) -> int:
    """Return the resident memory (kB) of pid and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        found = re.search(r"VmRSS:\s+(\d+)", status)
        total += int(found[1]) if found else 0
    return total


def port_of(url: str) -> int:
    return int(re.search(r":(\d+)/", url)[1])


def port_is_free(port: int) -> bool:
    """True when a new server could listen on port, as mcprun binds (SO_REUSEADDR: TIME_WAIT doesn't count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- authentication -------------------------------------------------------------


@BOTH
def test_auth_matrix(token, transport, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(f"# rotated monthly\n{TOKEN}\n")
    with serving(token, PRODUCTION, "--auth-token-file", str(token_file), transport=transport, cwd=SERVERS) as server:
        url = server.url
        no_token = httpx.post(url, json=INITIALIZE, headers=STREAM_HEADERS, timeout=10)
        assert no_token.status_code == 401
        assert no_token.headers["www-authenticate"] == 'Bearer realm="mcp"'
        wrong = httpx.post(url, json=INITIALIZE, headers={**STREAM_HEADERS, "authorization": "Bearer nope"}, timeout=10)
        assert wrong.status_code == 401
        assert wrong.headers["www-authenticate"] == 'Bearer realm="mcp", error="invalid_token"'
        basic = httpx.get(url, headers={"authorization": f"Basic {TOKEN}"}, timeout=10)
        assert basic.status_code == 401
        in_query = httpx.post(f"{url}?access_token={TOKEN}", json=INITIALIZE, headers=STREAM_HEADERS, timeout=10)
        assert in_query.status_code == 400 and "invalid_request" in in_query.headers["www-authenticate"]
        in_other_query = httpx.post(f"{url}?key={TOKEN}", json=INITIALIZE,
                                    headers={**STREAM_HEADERS, "authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert in_other_query.status_code == 400
        root = url.rsplit("/", 1)[0]
        assert httpx.get(f"{root}/healthz", timeout=10).json() == {"status": "ok"}
        assert httpx.get(f"{root}/readyz", timeout=10).json() == {"status": "ready"}
        assert text_of(run_async(call(url, "echo", {"text": "ok"}, token=TOKEN))) == "ok#0"
        with pytest.raises(Exception):  # noqa: B017 - fastmcp's message varies by transport
            run_async(call(url, "echo", {"text": "no"}))
    assert TOKEN not in server.stderr
    assert server.stderr.count("without authentication") == 0


@pytest.mark.skipif(not MCP1_PYTHON.exists(), reason="run './build test' to create .venv-mcp1")
@BOTH
def test_auth_token_from_environment_with_an_old_client(token, transport):
    env = child_env(token, MCPRUN_AUTH_TOKEN=TOKEN)
    with serving(token, "fastmcp_server.py", transport=transport, cwd=SERVERS, env=env) as server:
        result = subprocess.run([str(MCP1_PYTHON), str(MCP1_CLIENT), transport, server.url], capture_output=True,
                                text=True, timeout=60, env=child_env(token, MCP1_BEARER=TOKEN))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["echo"] == "hi"
        refused = subprocess.run([str(MCP1_PYTHON), str(MCP1_CLIENT), transport, server.url], capture_output=True,
                                 text=True, timeout=60, env=child_env(token, MCP1_BEARER="wrong"))
        assert refused.returncode != 0


def test_non_loopback_without_auth_warns_once_and_require_auth_refuses(token):
    with started(token, PRODUCTION, "-t", "http", "--host", "0.0.0.0", "-p", "0", cwd=SERVERS) as server:
        assert server.stderr.count("mcprun: warning: serving on 0.0.0.0 without authentication") == 1
    with started(token, PRODUCTION, "-t", "http", "--host", "0.0.0.0", "-p", "0", "--auth-token", TOKEN,
                 cwd=SERVERS) as server:
        assert "without authentication" not in server.stderr
    with started(token, PRODUCTION, "-t", "http", "-p", "0", cwd=SERVERS) as server:  # loopback: no warning
        assert "warning" not in server.stderr
    refused = run_cli(token, PRODUCTION, "-t", "http", "-p", "0", "--require-auth", cwd=SERVERS)
    assert refused.returncode == 2
    assert refused.stderr.strip() == ("mcprun: error: --require-auth: no token given; "
                                      "set MCPRUN_AUTH_TOKEN or --auth-token-file FILE")


def test_server_with_its_own_auth_keeps_it(token):
    with serving(token, "own_auth_server.py", cwd=SERVERS) as server:
        assert httpx.post(server.url, json=INITIALIZE, headers=STREAM_HEADERS, timeout=10).status_code == 401
        assert text_of(run_async(call(server.url, "echo", {"text": "mine"}, token="server-own-token"))) == "mine"
    refused = run_cli(token, "own_auth_server.py", "-t", "http", "-p", "0", "--auth-token", TOKEN, cwd=SERVERS)
    assert refused.returncode == 2
    assert "mcprun: error: the server configures its own authentication" in refused.stderr


@pytest.mark.parametrize("args, env, message", [
    (["--auth-token", " "], {}, "the auth token (command line) is empty"),
    (["--auth-token", "two words"], {}, "a token may hold only letters, digits and -._~+/="),
    (["--auth-token-file", "/nonexistent/token"], {}, "--auth-token-file /nonexistent/token: No such file"),
    (["--auth-token-file", "EMPTY"], {}, "holds no token" if False else "is empty"),
    (["--auth-token", "a"], {"MCPRUN_AUTH_TOKEN_FILE": "/x"}, "both an auth token (command line) and a token file"),
    (["--max-body", "lots"], {}, "argument --max-body: 'lots' is not a size"),
    (["--graceful-timeout", "-1"], {}, "argument --graceful-timeout: '-1' is not a number of seconds"),
    (["--log-format", "xml"], {}, "argument --log-format: invalid choice: 'xml'"),
    ([], {"MCPRUN_MAX_BODY": "0"}, "MCPRUN_MAX_BODY='0': '0' is not a size"),
    (["--max-connections", "0"], {}, "argument --max-connections: '0' is not a positive whole number (e.g. 1000)"),
    (["--read-timeout", "soon"], {}, "argument --read-timeout: 'soon' is not a number of seconds (e.g. 10 or 2.5)"),
    ([], {"MCPRUN_MAX_SESSIONS": "-3"}, "MCPRUN_MAX_SESSIONS='-3': '-3' is not a positive whole number (e.g. 1000)"),
    (["--session-idle-timeout", "0"], {},
     "argument --session-idle-timeout: '0' is not a number of seconds above 0 (e.g. 600)"),
])
def test_bad_production_options_are_one_line_errors(token, tmp_path, args, env, message):
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    args = [str(empty) if arg == "EMPTY" else arg for arg in args]
    result = run_cli(token, PRODUCTION, "-t", "http", "-p", "0", *args, cwd=SERVERS, env=child_env(token, **env))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("error:") == 1


# -- Host and Origin (DNS rebinding), CORS ----------------------------------------


@BOTH
@pytest.mark.parametrize("spec", [PRODUCTION, "sdk_server.py"])
def test_rebinding_refused_on_loopback_and_allowed_when_listed(token, transport, spec):
    with serving(token, spec, transport=transport, cwd=SERVERS) as server:
        port = port_of(server.url)
        assert first_request_status(transport, server.url, {"host": "evil.example"}) == 421
        assert first_request_status(transport, server.url, {"origin": "http://evil.example"}) == 403
        assert first_request_status(transport, server.url, {"origin": f"http://localhost:{port}"}) == 200
        assert first_request_status(transport, server.url) == 200
    with serving(token, spec, "--allowed-host", "evil.example", "--allowed-origin", "https://app.example",
                 transport=transport, cwd=SERVERS) as server:
        assert first_request_status(transport, server.url, {"host": "evil.example"}) == 200
        assert first_request_status(transport, server.url, {"host": "other.example"}) == 421
        assert first_request_status(transport, server.url, {"origin": "https://app.example"}) == 200
        assert first_request_status(transport, server.url, {"origin": "https://evil.example"}) == 403


def test_cors_preflight_and_headers(token):
    origin = "https://app.example"
    with serving(token, PRODUCTION, "--cors-origin", origin, "--auth-token", TOKEN, cwd=SERVERS) as server:
        preflight = httpx.options(server.url, headers={
            "origin": origin, "access-control-request-method": "POST",
            "access-control-request-headers": "authorization, content-type, mcp-session-id"}, timeout=10)
        assert preflight.status_code == 200  # answered before auth: a preflight carries no token
        assert preflight.headers["access-control-allow-origin"] == origin
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "authorization" in allowed and "mcp-session-id" in allowed
        response = initialize_request(server.url, {"origin": origin, "authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == origin
        assert "mcp-session-id" in response.headers["access-control-expose-headers"].lower()
        foreign = httpx.options(server.url, headers={"origin": "https://evil.example",
                                                     "access-control-request-method": "POST"}, timeout=10)
        assert foreign.status_code == 403


# -- health ---------------------------------------------------------------------------


@BOTH
def test_health_routes_configurable_and_not_logged(token, transport):
    with serving(token, PRODUCTION, "--health-path", "/live", "--ready-path", "ready", "--auth-token", TOKEN,
                 transport=transport, cwd=SERVERS) as server:
        root = server.url.rsplit("/", 1)[0]
        assert httpx.get(f"{root}/live", timeout=10).status_code == 200
        assert httpx.get(f"{root}/ready", timeout=10).json() == {"status": "ready"}
        assert httpx.get(f"{root}/healthz", timeout=10).status_code == 401  # an ordinary route now
        assert text_of(run_async(call(server.url, "echo", {"text": "x"}, token=TOKEN))) == "x#0"
        wait_for(lambda: "tool=echo" in server.stderr)
    assert '"GET /live"' not in server.stderr and '"GET /ready"' not in server.stderr
    assert '"GET /healthz" 401' in server.stderr


# -- graceful shutdown ------------------------------------------------------------------


def start_in_thread(coroutine_function, *args) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def target():
        try:
            outcome["result"] = run_async(coroutine_function(*args))
        except Exception as exc:  # noqa: BLE001 - reported by the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


@BOTH
def test_sigterm_lets_a_slow_call_finish_runs_lifespan_shutdown_and_exits_0(token, transport, tmp_path):
    marks = tmp_path / "marks"
    env = child_env(token, PRODUCTION_MARKS=str(marks))
    with serving(token, PRODUCTION, transport=transport, cwd=SERVERS, env=env) as server:
        thread, outcome = start_in_thread(call, server.url, "slow", {"seconds": 2, "mark": True})
        wait_for(lambda: marks.exists() and "slow-started" in marks.read_text())
        with httpx.Client(timeout=10) as keep_alive:  # an open connection sees the drain
            root = server.url.rsplit("/", 1)[0]
            assert keep_alive.get(f"{root}/readyz").status_code == 200
            server.process.send_signal(signal.SIGTERM)
            wait_for(lambda: keep_alive.get(f"{root}/readyz").status_code == 503, timeout=5, what="the drain")
            assert keep_alive.get(f"{root}/readyz").json() == {"status": "stopping"}
        assert server.process.wait(15) == 0, server.stderr
        thread.join(15)
        assert text_of(outcome["result"]) == "slept 2"
        assert port_is_free(port_of(server.url))
    assert marks.read_text().split() == ["started", "slow-started", "slow-finished", "stopped"]


def test_a_request_right_after_a_call_ends_in_the_drain_is_answered_on_its_connection(token, tmp_path):
    # MCP clients follow a call at once (the SDKs list the tools to check its result): the drain
    # must not close the connection between the two, or the client sees the call fail.
    marks = tmp_path / "marks"
    env = child_env(token, PRODUCTION_MARKS=str(marks))
    with serving(token, PRODUCTION, "--stateless", cwd=SERVERS, env=env) as server:
        with httpx.Client(timeout=15, headers=STREAM_HEADERS, limits=httpx.Limits(max_connections=1)) as one:
            outcome: dict = {}
            thread = threading.Thread(target=lambda: outcome.update(result=one.post(
                server.url, json=tools_call(1, "slow", {"seconds": 2, "mark": True}))), daemon=True)
            thread.start()
            wait_for(lambda: marks.exists() and "slow-started" in marks.read_text())
            server.process.send_signal(signal.SIGTERM)
            thread.join(15)
            assert "slept 2" in outcome["result"].text
            time.sleep(0.2)  # a slow client; the drain polls every 0.05 s
            follow_up = one.post(server.url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
            assert follow_up.status_code == 200 and '"slow"' in follow_up.text
        assert server.process.wait(15) == 0, server.stderr


def accepted_by(pid: int, client: socket.socket) -> bool:
    """True once the process pid has accept()ed the server end of client's loopback TCP connection: the kernel
    shows an inode for a connection only once a process holds it (0 while it waits in the listen queue)."""
    mine = f"0100007F:{client.getsockname()[1]:04X}"
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2] == mine and fields[9] != "0":
            inode = fields[9]
            return any(os.readlink(fd) == f"socket:[{inode}]" for fd in Path(f"/proc/{pid}/fd").iterdir())
    return False


def test_a_connection_taken_before_the_drain_has_its_first_request_served(token, tmp_path):
    # A balancer that opens a connection for each request (nginx without keepalive) connects, then sends; once,
    # a SIGTERM between the two refused the request with 503, and nginx, which never resends a POST it has sent,
    # failed the client's call: a request on a connection taken before the drain had no way to go elsewhere.
    marks = tmp_path / "marks"
    env = child_env(token, PRODUCTION_MARKS=str(marks))
    with serving(token, PRODUCTION, "--stateless", cwd=SERVERS, env=env) as server:
        thread, outcome = start_in_thread(call, server.url, "slow", {"seconds": 3, "mark": True})  # the drain lasts
        wait_for(lambda: marks.exists() and "slow-started" in marks.read_text())
        address = ("127.0.0.1", port_of(server.url))
        with socket.create_connection(address, timeout=15) as fresh, \
                socket.create_connection(address, timeout=15) as kept:
            wait_for(lambda: accepted_by(server.process.pid, fresh) and accepted_by(server.process.pid, kept))
            post = (f"POST /mcp HTTP/1.1\r\nHost: {address[0]}:{address[1]}\r\nContent-Type: application/json\r\n"
                    "Accept: application/json, text/event-stream\r\nContent-Length: {length}\r\n\r\n{body}")
            body = json.dumps(tools_call(1, "echo", {"text": "first"}))
            kept.sendall(post.format(length=len(body), body=body).encode())  # a request before the drain
            before = b""
            while b"first#0" not in before and (chunk := kept.recv(65536)):
                before += chunk
            assert b"first#0" in before, before
            server.process.send_signal(signal.SIGTERM)

            def refused() -> bool:
                try:
                    socket.create_connection(address, timeout=5).close()
                except ConnectionRefusedError:
                    return True
                return False

            wait_for(refused, timeout=10, what="the port to close")
            time.sleep(0.3)  # a slow balancer: its request comes after the drain has begun
            fresh.sendall(post.format(length=len(body), body=body).encode())
            kept.sendall(post.format(length=len(body), body=body).encode())
            answers = [b"", b""]
            for index, connection in enumerate((fresh, kept)):
                while chunk := connection.recv(65536):
                    answers[index] += chunk
        first, again = (answer.decode() for answer in answers)
        assert first.startswith("HTTP/1.1 200") and "first#0" in first, first
        assert "\r\nconnection: close\r\n" in first.lower()  # and it is the last one on that connection
        assert again.startswith("HTTP/1.1 503"), again  # a new call on a connection that had one: go elsewhere
        thread.join(15)
        assert text_of(outcome["result"]) == "slept 3"
        assert server.process.wait(15) == 0, server.stderr


@BOTH
def test_sigterm_ends_a_hanging_call_with_a_clean_error_after_the_grace_period(token, transport):
    with serving(token, PRODUCTION, "--graceful-timeout", "1", transport=transport, cwd=SERVERS) as server:
        thread, outcome = start_in_thread(call, server.url, "hang", {})
        wait_for(lambda: text_of(run_async(call(server.url, "held", {}))) == "1")
        began = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(15) == 0, server.stderr
        thread.join(15)
        assert "server shutting down" in str(outcome.get("error") or text_of(outcome["result"]))
        assert time.monotonic() - began < 10
        assert "Traceback" not in server.stderr and "ERROR" not in server.stderr


def test_second_sigint_forces(token):
    with serving(token, PRODUCTION, "--graceful-timeout", "60", cwd=SERVERS) as server:
        start_in_thread(call, server.url, "hang", {})
        wait_for(lambda: text_of(run_async(call(server.url, "held", {}))) == "1")
        with httpx.Client(timeout=10) as keep_alive:  # an open connection sees the drain begin
            root = server.url.rsplit("/", 1)[0]
            assert keep_alive.get(f"{root}/readyz").status_code == 200
            server.process.send_signal(signal.SIGINT)
            wait_for(lambda: keep_alive.get(f"{root}/readyz").status_code == 503, timeout=5, what="the drain")
        assert server.process.poll() is None  # draining, for up to 60 s
        server.process.send_signal(signal.SIGINT)
        server.process.wait(10)  # well before the grace period ends
        assert port_is_free(port_of(server.url))


def test_stdio_end_of_input_exits_0_promptly(token):
    process = subprocess.Popen([*mcprun_command(), PRODUCTION], cwd=SERVERS, env=child_env(token),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdin.write(json.dumps(INITIALIZE).encode() + b"\n")
    process.stdin.flush()
    assert json.loads(process.stdout.readline())["id"] == 1
    began = time.monotonic()
    process.stdin.close()
    assert process.wait(10) == 0
    assert time.monotonic() - began < 2  # the issue asks for "within a second"; slack for a loaded machine
    assert b"Traceback" not in process.stderr.read()


def test_stdio_broken_pipe_exits_quietly(token):
    process = subprocess.Popen([*mcprun_command(), PRODUCTION], cwd=SERVERS, env=child_env(token),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the client stops reading
    try:
        process.stdin.write(json.dumps(INITIALIZE).encode() + b"\n" + json.dumps(INITIALIZED).encode() + b"\n")
        process.stdin.write(json.dumps(tools_call(2, "payload", {"kilobytes": 256})).encode() + b"\n")
        process.stdin.flush()
        process.stdin.close()
    except BrokenPipeError:
        pass
    assert process.wait(15) in (0, 1)
    stderr = process.stderr.read().decode()
    assert "Traceback" not in stderr


# -- limits and faults -------------------------------------------------------------------


def message_endpoint(lines, root: str) -> str:
    """Read an SSE stream's endpoint event; return the URL to POST messages to."""
    return root + next(line for line in lines if line.startswith("data: "))[6:]


def oversized_chunks():  # no Content-Length: the limit counts as the body streams in
    yield b'{"jsonrpc":"2.0","id":5,"method":"ping","params":{"pad":"'
    for _ in range(10):
        yield b"y" * 10_000
    yield b'"}}'


@BOTH
def test_body_limit(token, transport):
    over = json.dumps(tools_call(5, "size", {"text": "x" * 70_000}))
    with serving(token, PRODUCTION, "--max-body", "64kB", transport=transport, cwd=SERVERS) as server:
        if transport == "http":
            assert httpx.post(server.url, content=over, headers=STREAM_HEADERS, timeout=10).status_code == 413
            assert httpx.post(server.url, content=oversized_chunks(), headers=STREAM_HEADERS,
                              timeout=10).status_code == 413
        else:
            root = server.url.rsplit("/", 1)[0]
            with httpx.stream("GET", server.url, headers={"accept": "text/event-stream"}, timeout=10) as stream:
                lines = stream.iter_lines()
                messages = message_endpoint(lines, root)
                assert httpx.post(messages, content=over, headers=STREAM_HEADERS, timeout=10).status_code == 413
                assert httpx.post(messages, content=oversized_chunks(), headers=STREAM_HEADERS,
                                  timeout=10).status_code == 413
        assert text_of(run_async(call(server.url, "size", {"text": "x" * 50_000}))) == "50000"


@BOTH
def test_default_body_limit_admits_10_mib(token, transport):
    with serving(token, PRODUCTION, transport=transport, cwd=SERVERS) as server:
        size = 10 * 1024 * 1024
        assert text_of(run_async(call(server.url, "size", {"text": "z" * size}))) == str(size)


def test_streamable_http_faults_get_the_right_errors(token):
    with serving(token, PRODUCTION, cwd=SERVERS) as server:
        url = server.url
        session = initialize_request(url).headers["mcp-session-id"]
        with_session = {**STREAM_HEADERS, "mcp-session-id": session, "mcp-protocol-version": "2025-06-18"}
        malformed = httpx.post(url, content=b'{"jsonrpc": "2.0", "id": 1, "method": ', headers=with_session)
        assert malformed.status_code == 400 and malformed.json()["error"]["code"] == -32700
        not_utf8 = httpx.post(url, content=b'{"jsonrpc":"2.0","id":1,"method":"ping\xff\xfe"}', headers=with_session)
        assert not_utf8.status_code == 400
        wrong_type = httpx.post(url, content=json.dumps(INITIALIZE),
                                headers={**with_session, "content-type": "text/plain"})
        assert wrong_type.status_code == 415
        not_jsonrpc = httpx.post(url, json={"hello": "world"}, headers=with_session)
        assert not_jsonrpc.status_code == 400
        unknown = httpx.post(url, json=tools_call(3, "echo", {"text": "x"}),
                             headers={**with_session, "mcp-session-id": "0" * 32})
        assert unknown.status_code == 404
        assert run_async(exercise_fastmcp_production(url)) == "fresh#1"


def test_sse_faults_get_the_right_errors(token):
    with serving(token, PRODUCTION, transport="sse", cwd=SERVERS) as server:
        root = server.url.rsplit("/", 1)[0]
        with httpx.stream("GET", server.url, headers={"accept": "text/event-stream"}, timeout=10) as stream:
            lines = stream.iter_lines()  # kept alive: a dropped iterator closes the stream, and the session
            messages = message_endpoint(lines, root)
            assert httpx.post(messages, content=b'{"jsonrpc": ', headers=STREAM_HEADERS).status_code == 400
            assert httpx.post(messages, content=b"\xff\xfe\x00", headers=STREAM_HEADERS).status_code == 400
            assert httpx.post(messages, json={"hello": 1}, headers=STREAM_HEADERS).status_code == 400
            wrong_type = httpx.post(messages, json=INITIALIZE, headers={**STREAM_HEADERS, "content-type": "text/plain"})
            assert wrong_type.status_code == 415
            assert httpx.post(messages, json=INITIALIZE, headers=STREAM_HEADERS).status_code == 202
            assert '"id":1,"result"' in next(line for line in lines if line.startswith("data: {"))
        unknown = httpx.post(f"{root}/messages/?session_id={'0' * 32}", json=INITIALIZE, headers=STREAM_HEADERS)
        assert unknown.status_code == 404
        no_session = httpx.post(f"{root}/messages/", json=INITIALIZE, headers=STREAM_HEADERS)
        assert no_session.status_code == 400
        assert run_async(exercise_fastmcp_production(server.url)) == "fresh#1"


async def exercise_fastmcp_production(url: str) -> str:
    async with client(url) as session:
        return text_of(await session.call_tool("echo", {"text": "fresh", "n": 1}))


@BOTH
def test_a_raising_tool_is_an_error_result_and_a_hanging_one_blocks_no_one(token, transport):
    with serving(token, PRODUCTION, transport=transport, cwd=SERVERS) as server:
        failed = run_async(call(server.url, "fail", {"message": "boom"}))
        assert failed.is_error and "boom" in text_of(failed)
        start_in_thread(call, server.url, "hang", {})
        start_in_thread(call, server.url, "blocking", {"seconds": 20})
        wait_for(lambda: text_of(run_async(call(server.url, "held", {}))) == "1")
        began = time.monotonic()
        assert text_of(run_async(call(server.url, "echo", {"text": "still"}))) == "still#0"
        assert time.monotonic() - began < 10


def disconnecting_clients(transport: str, url: str) -> list[list[str]]:
    """Client commands that call hang() and print 'calling' first: fastmcp's, and mcp 1.x's if present."""
    fastmcp_client = ("import asyncio, sys\nfrom fastmcp import Client\n"
                      "async def main():\n    async with Client(sys.argv[1]) as c:\n"
                      "        print('calling', flush=True)\n        await c.call_tool('hang', {})\n"
                      "asyncio.run(main())\n")
    commands = [[sys.executable, "-c", fastmcp_client, url]]
    if MCP1_PYTHON.exists():
        commands.append([str(MCP1_PYTHON), str(MCP1_CLIENT), "call", transport, url, "hang"])
    return commands


@BOTH
def test_a_client_that_disconnects_mid_call_frees_what_it_held(token, transport):
    with serving(token, PRODUCTION, transport=transport, cwd=SERVERS) as server:
        for command in disconnecting_clients(transport, server.url):
            process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=child_env(token))
            try:
                assert process.stdout.readline().strip() == "calling"
                wait_for(lambda: text_of(run_async(call(server.url, "held", {}))) == "1")
            finally:
                process.kill()
                process.wait(10)
            wait_for(lambda: text_of(run_async(call(server.url, "held", {}))) == "0", timeout=20, interval=0.3)


def test_stdio_survives_garbage_and_a_50_mb_line(token):
    messages = [
        INITIALIZE, INITIALIZED,
        b"this is not json", b"\xff\xfe\x00\x80 binary garbage", b"[1, 2",
        b'{"jsonrpc": "2.0", "id": 7}',  # neither request nor response
        b"x" * (50 * 1024 * 1024),
        tools_call(9, "echo", {"text": "after", "n": 9}),
        {"jsonrpc": "2.0", "id": 10, "method": "no/such"},
        tools_call(11, "fail", {"message": "boom"}),
        tools_call(12, "echo", {"text": "last", "n": 12}),
    ]
    result = stdio_exchange([*mcprun_command(), PRODUCTION], messages, token, cwd=SERVERS, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    answers = {}
    for line in result.stdout.splitlines():
        message = json.loads(line)  # nothing but JSON-RPC on stdout
        answers[message.get("id")] = message
    assert answers[9]["result"]["content"][0]["text"] == "after#9"
    assert answers[10]["error"]["code"] == -32601
    assert answers[11]["result"]["isError"] is True
    assert answers[12]["result"]["content"][0]["text"] == "last#12"


# -- logs ----------------------------------------------------------------------------------


@BOTH
def test_access_log_lines(token, transport):
    with serving(token, PRODUCTION, transport=transport, cwd=SERVERS) as server:
        assert text_of(run_async(call(server.url, "echo", {"text": "logged"}))) == "logged#0"
        httpx.get(server.url.rsplit("/", 1)[0] + "/healthz", timeout=10)
        line = wait_for(lambda: next((line for line in server.lines if "tool=echo" in line), None))
    method_path = '"POST /mcp" 200' if transport == "http" else '"POST /messages/" 202'
    assert re.search(r'^\d\d:\d\d:\d\d INFO mcprun\.access: 127\.0\.0\.1:\d+ ' + re.escape(method_path)
                     + r' \d+\.\dms( session=[0-9a-f]{8}…)? rpc=tools/call tool=echo$', line.rstrip()), line
    if transport == "sse":
        assert "session=" in line
    assert "/healthz" not in server.stderr
    assert "logged" not in server.stderr  # arguments are never logged


def test_no_access_log(token):
    with serving(token, PRODUCTION, "--no-access-log", cwd=SERVERS) as server:
        run_async(call(server.url, "echo", {"text": "quiet"}))
    assert "mcprun.access" not in server.stderr


def test_json_logs(token):
    env = child_env(token, MCPRUN_LOG_FORMAT="json")
    process = subprocess.Popen([*mcprun_command(), PRODUCTION, "-t", "http", "-p", "0", "--host", "0.0.0.0"],
                               cwd=SERVERS, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        ready = wait_for(lambda: next((json.loads(line) for line in list(lines) if '"ready: ' in line), None), 60)
        url = re.search(r"at (http://\S+)", ready["message"])[1]
        assert ready["logger"] == "mcprun" and ready["level"] == "INFO"
        assert text_of(run_async(call(url, "echo", {"text": "j"}))) == "j#0"
        access = wait_for(lambda: next((json.loads(line) for line in list(lines) if '"tool": "echo"' in line), None))
        assert access["logger"] == "mcprun.access"
        assert access["method"] == "POST" and access["status"] == 200 and access["rpc"] == "tools/call"
        assert isinstance(access["duration_ms"], float)
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        process.kill()
        reader.join(10)
    parsed = [json.loads(line) for line in lines]  # every line, warnings included, is one JSON object
    assert any(entry["level"] == "WARNING" and "without authentication" in entry["message"] for entry in parsed)


def test_no_colour_even_on_a_terminal(token):
    leader, follower = pty.openpty()
    process = subprocess.Popen([*mcprun_command(), PRODUCTION, "-t", "http", "-p", "0"], cwd=SERVERS,
                               env=child_env(token, TERM="xterm-256color"), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    output = b""
    try:
        deadline = time.monotonic() + 60
        while b"ready:" not in output and time.monotonic() < deadline:
            try:
                output += os.read(leader, 65536)
            except OSError:
                break
        assert b"ready:" in output
        url = re.search(rb"at (http://\S+)", output)[1].decode()
        run_async(call(url, "echo", {"text": "c"}))
        process.send_signal(signal.SIGTERM)
        process.wait(15)
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    finally:
        process.kill()
        os.close(leader)
    assert b"\x1b[" not in output
    assert b"mcprun.access" in output


# -- bounded load -------------------------------------------------------------------------


async def load(url: str, clients: int, calls: int) -> tuple[int, list[float]]:
    """clients concurrent sessions each make calls echo calls; return (mismatches, latencies)."""
    from fastmcp import Client

    latencies: list[float] = []

    async def one(index: int) -> int:
        wrong = 0
        async with Client(url) as session:
            for n in range(calls):
                began = time.perf_counter()
                result = await session.call_tool("echo", {"text": f"c{index}", "n": n})
                latencies.append(time.perf_counter() - began)
                wrong += result.content[0].text != f"c{index}#{n}"
        return wrong

    return sum(await asyncio.gather(*(one(i) for i in range(clients)))), latencies


@BOTH
def test_bounded_load_without_errors_or_growth(token, transport):
    clients, calls = 8, int(os.environ.get("MCPRUN_TEST_LOAD_CALLS", "1000"))
    with serving(token, PRODUCTION, "--no-access-log", transport=transport, cwd=SERVERS) as server:
        assert run_async(load(server.url, clients, calls // 5), timeout=600)[0] == 0  # warm-up
        warm_rss = process_tree_rss(server.process.pid)
        began = time.perf_counter()
        wrong, latencies = run_async(load(server.url, clients, calls), timeout=900)
        elapsed = time.perf_counter() - began
        after_rss = process_tree_rss(server.process.pid)
        assert wrong == 0
        assert len(latencies) == clients * calls
        latencies.sort()
        report = (f"{transport}: {clients}x{calls} calls in {elapsed:.1f}s = {clients * calls / elapsed:.0f}/s, "
                  f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, "
                  f"RSS {warm_rss} kB after warm-up, {after_rss} kB after")
        print(report)  # pytest -s shows it
        assert after_rss <= 1.2 * warm_rss, report
        assert server.process.poll() is None


# -- hostile clients: bounded memory, prompt stops, one honest log line each ---------------------


def test_calls_posted_to_made_up_sse_sessions_are_not_kept(token):
    # the SDK answers 404; the gateway once kept each id as a reply owed (1 MB each here), until SIGTERM waited
    # the whole grace period for replies no stream would ever carry
    with serving(token, PRODUCTION, "--graceful-timeout", "30", transport="sse", cwd=SERVERS) as server:
        root = server.url.rsplit("/", 1)[0]
        before = process_tree_rss(server.process.pid)
        with httpx.Client(timeout=30) as http:
            for number in range(100):
                body = json.dumps({"jsonrpc": "2.0", "id": f"{number}{'x' * 1_000_000}", "method": "ping"})
                made_up = f"{root}/messages/?session_id={os.urandom(16).hex()}"
                assert http.post(made_up, content=body, headers=STREAM_HEADERS).status_code == 404
            for odd in (1.5, True):  # ids the SDK takes as notifications: no reply is ever owed
                assert http.post(made_up, json={"jsonrpc": "2.0", "id": odd, "method": "ping"},
                                 headers=STREAM_HEADERS).status_code == 404
        grown = process_tree_rss(server.process.pid) - before
        assert grown < 40_000, f"resident memory grew by {grown} kB"  # kept, the ids alone were 100,000 kB
        stopping = time.monotonic()
        assert server.stop(timeout=40) == 0, server.stderr
        assert time.monotonic() - stopping < 20  # idle: no owed reply to wait the 30 s grace period for


def test_a_path_that_forges_a_log_line_stays_one_escaped_line(token):
    forged = "/x%0a09:00:00%20INFO%20mcprun.access:%20127.0.0.1:1%20%22GET%20/%22%20200%20FORGED"
    with serving(token, PRODUCTION, "--auth-token", TOKEN, cwd=SERVERS) as server:  # refused requests are logged too
        root = server.url.rsplit("/", 1)[0]
        assert httpx.get(root + forged, timeout=10).status_code == 401
        huge = tools_call(7, "t" * 1_000_000, {})  # a tool name of 1 MB
        assert httpx.post(server.url, json=huge, headers={**STREAM_HEADERS, "authorization": f"Bearer {TOKEN}"},
                          timeout=30).status_code in (400, 404)
        logged = wait_for(lambda: [line for line in server.lines if "FORGED" in line] if any(
            "tool=ttt" in line for line in server.lines) else None)
    assert len(logged) == 1 and logged[0].startswith(tuple("0123456789")), logged
    assert f'"GET {forged}" 401' in logged[0]
    assert not any(line.startswith("09:00:00") for line in server.lines), server.stderr
    tool_line = next(line for line in server.lines if "tool=ttt" in line)
    assert len(tool_line) < 500 and tool_line.rstrip().endswith("t…"), tool_line[:300]


@BOTH
def test_deeply_nested_json_is_a_parse_error_not_a_crash(token, transport):
    with serving(token, PRODUCTION, transport=transport, cwd=SERVERS) as server:
        with httpx.Client(timeout=30) as http:
            if transport == "http":
                url = server.url
                stream = None
            else:
                stream = http.stream("GET", server.url, headers={"accept": "text/event-stream"})
                lines = stream.__enter__().iter_lines()
                url = message_endpoint(lines, server.url.rsplit("/", 1)[0])
            try:
                for depth in (1_000, 10_000, 1_000_000):
                    answer = http.post(url, content=b"[" * depth + b"]" * depth, headers=STREAM_HEADERS)
                    assert answer.status_code == 400, (depth, answer.text[:200])
                    if transport == "http":
                        assert answer.json()["error"]["code"] == -32700
            finally:
                if stream is not None:
                    stream.__exit__(None, None, None)
        assert text_of(run_async(call(server.url, "echo", {"text": "still"}))) == "still#0"
    assert "Traceback" not in server.stderr


def open_files_limit(count: int):
    """preexec_fn: a child whose soft and hard limits on open files are both count (systemd's soft default)."""
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


@pytest.fixture
def many_files():
    """Let this test process hold a few thousand sockets (root may raise its hard limit)."""
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max(limits[1], 4096)
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def test_idle_connections_past_the_open_files_limit_lock_no_one_out(token, many_files):
    # once, 1,100 idle connections under a 1,024 limit left no descriptor to accept with: every client was locked
    # out, and asyncio's accept loop logged "Too many open files" with a traceback at 1.5 MB/s
    with serving(token, PRODUCTION, cwd=SERVERS, preexec_fn=open_files_limit(1024)) as server:
        port = port_of(server.url)
        held = []
        try:
            for number in range(1_100):
                connection = socket.create_connection(("127.0.0.1", port), timeout=10)
                if number % 2:  # half of them send headers that never end (slowloris)
                    connection.sendall(b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ")
                held.append(connection)
            began = time.monotonic()
            assert text_of(run_async(call(server.url, "echo", {"text": "in"}))) == "in#0"
            assert time.monotonic() - began < 20
        finally:
            for connection in held:
                connection.close()
        assert "Too many open files" not in server.stderr
        assert len(server.lines) < 40, server.stderr[-3000:]  # the ready line, an access line per request


def test_a_request_that_stops_arriving_is_ended_by_the_read_timeout(token):
    with serving(token, PRODUCTION, "--read-timeout", "1", cwd=SERVERS) as server:
        port = port_of(server.url)
        request = (b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                   b"accept: application/json, text/event-stream\r\n")
        for sent in (request, request + b"content-length: 100\r\n\r\n{\"jsonrpc\""):  # headers, then body
            with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
                connection.sendall(sent)
                began = time.monotonic()
                answer = connection.recv(1000)
                assert answer.startswith(b"HTTP/1.1 408 "), answer
                assert connection.recv(1000) == b""  # and closed
                assert 0.5 < time.monotonic() - began < 8
        assert text_of(run_async(call(server.url, "echo", {"text": "on"}))) == "on#0"
    assert "Traceback" not in server.stderr


def test_headers_past_16_kib_are_refused_and_not_held(token):
    # once (uvicorn's httptools protocol, which sets no limit of its own), a 13 MB header was taken in and held
    with serving(token, PRODUCTION, cwd=SERVERS) as server:
        with socket.create_connection(("127.0.0.1", port_of(server.url)), timeout=10) as connection:
            connection.sendall(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-big: ")
            with contextlib.suppress(OSError):  # the server closes the connection while it is sent
                for _ in range(64):
                    connection.sendall(b"a" * 16384)
            answer = connection.recv(1000)
        assert answer.startswith(b"HTTP/1.1 431 ") and b"request headers over 16 KiB" in answer, answer
        with socket.create_connection(("127.0.0.1", port_of(server.url)), timeout=10) as connection:
            connection.sendall(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-fits: " + b"a" * 15000 + b"\r\n\r\n")
            assert connection.recv(1000).startswith(b"HTTP/1.1 200 ")  # under the limit: served
    assert "Traceback" not in server.stderr


def initialize_from(url: str, address: str) -> httpx.Response:
    with httpx.Client(timeout=10, transport=httpx.HTTPTransport(local_address=address)) as http:
        return http.post(url, json=INITIALIZE, headers=STREAM_HEADERS)


def test_a_session_flood_from_one_address_locks_no_other_out(token):
    # once, 10,000 initializes from one client took every session the SDK allows, for its 30-minute idle timeout
    with serving(token, PRODUCTION, "--max-sessions", "40", cwd=SERVERS) as server:
        answers = [initialize_from(server.url, "127.0.0.1") for _ in range(15)]
        assert [answer.status_code for answer in answers] == [200] * 10 + [429] * 5  # a quarter of 40
        assert answers[-1].json()["error"]["message"].startswith("too many sessions from this address (10)")
        assert initialize_from(server.url, "127.0.0.2").status_code == 200  # another address: served
        first = answers[0].headers["mcp-session-id"]
        closed = httpx.delete(server.url, headers={**STREAM_HEADERS, "mcp-session-id": first}, timeout=10)
        assert closed.status_code == 200
        assert initialize_from(server.url, "127.0.0.1").status_code == 200  # a closed session frees its place
        assert initialize_from(server.url, "127.0.0.1").status_code == 429
    assert sum("holds 10 sessions" in line for line in server.lines) == 1, server.stderr  # said once a minute


def test_a_session_idle_past_its_timeout_frees_its_place(token):
    with serving(token, PRODUCTION, "--max-sessions", "4", "--session-idle-timeout", "1", cwd=SERVERS) as server:
        idle = initialize_from(server.url, "127.0.0.1").headers["mcp-session-id"]
        wait_for(lambda: any(f"Session {idle} idle timeout" in line for line in server.lines), timeout=30,
                 what="the SDK to close the idle session")  # asking would keep it alive
        assert httpx.post(server.url, json=tools_call(2, "echo", {"text": "x"}), timeout=10, headers={
            **STREAM_HEADERS, "mcp-session-id": idle, "mcp-protocol-version": "2025-06-18"}).status_code == 404
        assert initialize_from(server.url, "127.0.0.1").status_code == 200  # its one place (4 / 4) is free


def test_sse_streams_from_one_address_are_capped_too(token):
    with serving(token, PRODUCTION, "--max-sessions", "8", transport="sse", cwd=SERVERS) as server:
        with contextlib.ExitStack() as stack:
            for _ in range(2):
                stream = stack.enter_context(httpx.stream("GET", server.url, timeout=10,
                                                          headers={"accept": "text/event-stream"}))
                assert stream.status_code == 200
            assert open_sse(server.url) == 429
            with httpx.Client(timeout=10, transport=httpx.HTTPTransport(local_address="127.0.0.2")) as other:
                with other.stream("GET", server.url, headers={"accept": "text/event-stream"}) as stream:
                    assert stream.status_code == 200
        wait_for(lambda: open_sse(server.url) == 200, timeout=20, what="the closed streams to be forgotten")


# -- a drain under keep-alive load --------------------------------------------------------


def outcome_of(answer: httpx.Response, request_id: int) -> str:
    """Classify the answer to one tools/call: 'result', 'error' (a complete JSON-RPC error), else 'lost'."""
    if answer.headers.get("content-type", "").startswith("text/event-stream"):
        messages = [json.loads(line[6:]) for line in answer.text.splitlines() if line.startswith("data: {")]
    else:
        try:
            messages = [answer.json()]
        except ValueError:
            messages = []
    for message in messages:
        if isinstance(message, dict) and message.get("id") == request_id:
            return "result" if "result" in message else "error" if "code" in message.get("error", {}) else "lost"
    return "lost"


async def keep_alive_client(url: str, stateless: bool, outcomes: dict, running: threading.Event) -> None:
    """Call echo in a loop on one kept-alive connection (a new one only when the server closes it), until
    the server is gone or running is cleared; count each call's outcome. 'unsent': the server was gone."""
    async with httpx.AsyncClient(timeout=30, headers=STREAM_HEADERS, limits=httpx.Limits(max_connections=1)) as http:
        headers = {}
        if not stateless:
            opened = await http.post(url, json=INITIALIZE)
            headers = {"mcp-session-id": opened.headers["mcp-session-id"], "mcp-protocol-version": "2025-06-18"}
            await http.post(url, json=INITIALIZED, headers=headers)
        number = 0
        while running.is_set():
            number += 1
            try:
                answer = await http.post(url, json=tools_call(number, "slow", {"seconds": 0.02}), headers=headers)
                outcome = outcome_of(answer, number)
            except httpx.ConnectError:
                outcomes["unsent"] = outcomes.get("unsent", 0) + 1
                return
            except httpx.HTTPError as exc:
                outcome = f"lost: {type(exc).__name__}"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1


def keep_alive_load(url: str, stateless: bool, clients: int = 8) -> tuple[threading.Thread, dict, threading.Event]:
    outcomes: dict = {}
    running = threading.Event()
    running.set()

    async def all_clients():
        await asyncio.gather(*(keep_alive_client(url, stateless, outcomes, running) for _ in range(clients)))

    thread = threading.Thread(target=lambda: asyncio.run(all_clients()), daemon=True)
    thread.start()
    wait_for(lambda: outcomes.get("result", 0) > 50, timeout=30, what="the load to run")
    return thread, outcomes, running


@pytest.mark.parametrize("stateless", [False, True], ids=["sessions", "stateless"])
def test_sigterm_under_keep_alive_load_loses_no_call(token, stateless):
    # once, new requests on kept connections kept the drain busy to the timeout, which then cut them: 6 calls got
    # -32000 and 8 a 200 header with no body
    mode = ("--stateless",) if stateless else ()
    with serving(token, PRODUCTION, *mode, "--graceful-timeout", "60", cwd=SERVERS) as server:
        thread, outcomes, running = keep_alive_load(server.url, stateless)
        stopping = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(40) == 0, server.stderr
        stopped = time.monotonic() - stopping
        thread.join(40)
        running.clear()
    assert not [outcome for outcome in outcomes if outcome.startswith("lost")], outcomes
    assert outcomes.get("unsent") == 8 and stopped < 30, (outcomes, stopped)  # the drain did not wait 60 s
    assert "Traceback" not in server.stderr and "ASGI callable" not in server.stderr


def test_sighup_under_keep_alive_load_loses_no_call(token):
    with serving(token, PRODUCTION, "--stateless", "--workers", "2", cwd=SERVERS) as server:
        thread, outcomes, running = keep_alive_load(server.url, stateless=True)
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: any("workers replaced" in line for line in server.lines), timeout=60,
                 what="the reload to end")
        answered = outcomes.get("result", 0)
        wait_for(lambda: outcomes.get("result", 0) > answered + 50, timeout=30, what="calls to the new workers")
        running.clear()
        thread.join(40)
    assert set(outcomes) == {"result"}, outcomes  # every call answered: the old workers' clients moved over


def test_large_requests_are_handled_a_few_at_a_time(token):
    # once, 8 concurrent 15.9 MB calls held ~6 copies of each body at once: an 875 MB peak
    padding = {"pad": "p" * 2_000_000}  # a large body (over 1 MiB) for a slow call
    with serving(token, PRODUCTION, "--stateless", "--read-timeout", "2", cwd=SERVERS) as server:
        async def six_at_once():
            async with httpx.AsyncClient(timeout=30, headers=STREAM_HEADERS) as http:
                return await asyncio.gather(*(http.post(server.url, json={
                    **tools_call(number, "slow", {"seconds": 5}), "params": {  # past the 2 s the others wait
                        "name": "slow", "arguments": {"seconds": 5}, "_meta": padding}}) for number in range(6)))

        answers = run_async(six_at_once())
        assert sorted(answer.status_code for answer in answers) == [200] * 4 + [503] * 2
        assert all("slept 5" in answer.text for answer in answers if answer.status_code == 200)
        refused = next(answer for answer in answers if answer.status_code == 503)
        assert refused.json()["error"]["message"] == "server busy with large requests; retry later"
        assert text_of(run_async(call(server.url, "echo", {"text": "small"}))) == "small#0"  # small ones pass
    assert sum("large requests (over 1 MiB) in progress" in line for line in server.lines) == 1, server.stderr


# -- --json-response: plain JSON answers over streamable HTTP ----------------------------------


@pytest.mark.parametrize("spec", ["fastmcp_server.py", "sdk_server.py", "compat/mcp1_full.py",
                                  "compat/lowlevel_object.py"])
def test_json_response_answers_plain_json_for_every_kind_of_server(token, spec):
    with serving(token, spec, "--json-response", cwd=SERVERS) as server:
        with httpx.Client(timeout=30) as http:
            answer = http.post(server.url, json=INITIALIZE, headers=STREAM_HEADERS)
            assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
            session = {"mcp-session-id": answer.headers["mcp-session-id"]} if "mcp-session-id" in answer.headers else {}
            http.post(server.url, json=INITIALIZED, headers={**STREAM_HEADERS, **session})
            listed = http.post(server.url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                               headers={**STREAM_HEADERS, **session, "mcp-protocol-version": "2025-06-18"})
        assert listed.headers["content-type"].startswith("application/json"), listed.headers
        assert listed.json()["result"]["tools"], listed.text


@pytest.mark.parametrize("json_response", [False, True], ids=["event stream", "json response"])
def test_json_response_trades_the_messages_during_a_call_for_speed(token, json_response):
    async def work(url: str) -> tuple:
        from fastmcp import Client

        progress = []

        async def on_progress(done, total, message):
            progress.append(done)

        async with Client(url) as client:
            result = await client.call_tool("work", {"steps": 3}, progress_handler=on_progress)
        return result.content[0].text, progress

    args = ["--json-response"] if json_response else []
    with serving(token, "compat/mcp1_full.py", *args, cwd=SERVERS) as server:
        text, progress = run_async(work(server.url))
    assert text == "Legacy/open/3/True"
    assert progress == ([] if json_response else [1, 2, 3])


def test_answers_are_plain_json_unless_the_server_speaks_during_the_call(token):
    """Without --json-response, an answer is plain JSON unless the server sends something for the request first
    (progress, a request to the client) or takes more than two seconds: then the event stream, from there on."""
    def call(http, headers, n, name, arguments):
        message = {"jsonrpc": "2.0", "id": n, "method": "tools/call",
                   "params": {"name": name, "arguments": arguments, "_meta": {"progressToken": n}}}
        answer = http.post(server.url, json=message, headers=headers)
        assert answer.status_code == 200, answer.text
        if answer.headers["content-type"].startswith("application/json"):
            return "json", [answer.json()]
        assert answer.headers["content-type"].startswith("text/event-stream"), answer.headers
        return "stream", [json.loads(line[5:]) for line in answer.text.splitlines() if line.startswith("data:")]

    async def ask(url: str) -> str:  # the SDK client: fastmcp's speaks a protocol era with no server requests
        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client
        from mcp_types import ElicitResult

        async def name(context, params):
            return ElicitResult(action="accept", content={"value": "Ada"})

        async with streamable_http_client(url) as (read_stream, write_stream, *_):
            async with ClientSession(read_stream, write_stream, elicitation_callback=name) as session:
                await session.initialize()
                return (await session.call_tool("ask", {})).content[0].text

    with serving(token, "speaks_during_calls.py", cwd=SERVERS) as server:
        with httpx.Client(timeout=30) as http:
            answer = http.post(server.url, json=INITIALIZE, headers=STREAM_HEADERS)
            assert answer.headers["content-type"].startswith("application/json"), answer.headers
            headers = {**STREAM_HEADERS, "mcp-session-id": answer.headers["mcp-session-id"],
                       "mcp-protocol-version": "2025-06-18"}
            http.post(server.url, json=INITIALIZED, headers=headers)
            kind, messages = call(http, headers, 2, "quick", {"text": "hi"})
            assert (kind, messages[0]["result"]["content"][0]["text"]) == ("json", "hi")
            kind, messages = call(http, headers, 3, "slow", {"seconds": 2.5})
            assert (kind, [m["result"]["content"][0]["text"] for m in messages]) == ("stream", ["slept 2.5"])
            kind, messages = call(http, headers, 4, "progress", {"steps": 2})
            assert kind == "stream" and [m.get("method") for m in messages] == [
                "notifications/progress", "notifications/progress", None], messages
            assert messages[-1]["result"]["content"][0]["text"] == "2 steps"
        assert run_async(ask(server.url)) == "hello Ada"


def test_json_response_over_sse_is_refused(token):
    result = run_cli(token, PRODUCTION, "-t", "sse", "--json-response", cwd=SERVERS, input="")
    assert result.returncode == 2 and result.stderr.strip() == (
        "mcprun: error: --json-response needs --transport http: sse answers only by its own stream"), result.stderr


def test_a_proxy_is_not_ready_while_its_upstream_is_unreachable(token):
    with serving(token, "fastmcp_server.py", cwd=SERVERS) as upstream:
        with serving(token, upstream.url, "--graceful-timeout", "1") as proxy:
            ready = proxy.url.rsplit("/", 1)[0] + "/readyz"
            first = httpx.get(ready, timeout=10)
            assert (first.status_code, first.json()) == (200, {"status": "ready"})
            assert upstream.stop() == 0
            down = httpx.get(ready, timeout=10)
            assert (down.status_code, down.json()) == (503, {"status": "upstream unreachable",
                                                             "upstream": upstream.url})
            assert httpx.get(proxy.url.rsplit("/", 1)[0] + "/healthz", timeout=10).status_code == 200  # alive


def mcp_json_of_breakable(tmp_path) -> tuple:
    """An mcp.json of two stdio servers, one of them breakable (it will not start while `mark` exists)."""
    mark = tmp_path / "broken"
    def server(mark_path) -> dict:
        return {"command": sys.executable, "args": [str(SERVERS / "breakable.py")],
                "env": {"BREAKABLE_MARK": str(mark_path)}}

    config = {"mcpServers": {"steady": server(tmp_path / "never"), "breakable": server(mark)}}
    (tmp_path / "mcp.json").write_text(json.dumps(config))
    return tmp_path / "mcp.json", mark


def test_a_proxy_of_stdio_servers_is_not_ready_while_one_cannot_start(token, tmp_path):
    config, mark = mcp_json_of_breakable(tmp_path)
    with serving(token, str(config)) as proxy:
        ready = proxy.url.rsplit("/", 1)[0] + "/readyz"
        wait_for(lambda: httpx.get(ready, timeout=30).status_code == 200, what="both stdio servers started")
        assert httpx.get(ready, timeout=30).json() == {"status": "ready"}

        async def child_pid() -> int:
            from fastmcp import Client

            async with Client(proxy.url) as client:
                return int((await client.call_tool("breakable_pid", {})).data)

        child = run_async(child_pid())
        mark.touch()
        os.kill(child, signal.SIGKILL)  # it died, and cannot start again
        breakable_down = (503, {"status": "upstream unreachable", "upstream": "mcp.json server breakable"})
        seen = []  # on a loaded machine a probe of the steady one may take past its 2 s once: ask again

        def names_breakable() -> bool:
            answer = httpx.get(ready, timeout=30)
            seen.append((answer.status_code, answer.json()))
            return seen[-1] == breakable_down

        wait_for(names_breakable, timeout=30, interval=0.5, what="readiness naming the broken server")
        assert all(status == 503 for status, _ in seen), seen  # never ready meanwhile
        mark.unlink()  # it can start again: the next probe starts it
        wait_for(lambda: httpx.get(ready, timeout=30).status_code == 200, what="readiness back")
        assert run_async(child_pid()) != child


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_exit_on_upstream_failure_exits_non_zero(token, transport):
    with serving(token, "fastmcp_server.py", cwd=SERVERS) as upstream:
        process = subprocess.Popen([*mcprun_command(), upstream.url, "--exit-on-upstream-failure", "-t", transport,
                                    *(["--port", "0"] if transport == "http" else [])],
                                   env=child_env(token), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        lines: list = []
        reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
        reader.start()
        try:
            wait_for(lambda: any(line.startswith(("mcprun: serving", "mcprun: ready")) for line in lines),
                     what="the proxy serving")
            assert upstream.stop() == 0
            process.wait(timeout=60)  # 3 probes, 5 s apart, then the drain
            reader.join(10)
        finally:
            process.kill()
    stderr = "".join(lines)
    lines = [line for line in stderr.splitlines() if line.startswith("mcprun: error:")]
    assert process.returncode == 1, stderr
    assert lines == [f"mcprun: error: the upstream {upstream.url} has not answered 3 probes in a row (15 s): "
                     "stopping (--exit-on-upstream-failure)"], stderr


def test_exit_on_upstream_failure_needs_a_proxy(token):
    result = run_cli(token, "fastmcp_server.py", "--exit-on-upstream-failure", cwd=SERVERS)
    assert error_line(result, 2) == ("mcprun: error: --exit-on-upstream-failure watches a proxy's upstreams: "
                                     "fastmcp_server.py is no URL nor mcp.json (of url entries or stdio servers)")
