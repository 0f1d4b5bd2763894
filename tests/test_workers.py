"""--workers: several processes serving one port, supervised; systemd socket activation and sd_notify.

The test server's tools return the PID of the process that answers, so a test can see which
worker served it. Every wait is bounded; every process dies with the test's token.
"""

import asyncio
import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from helpers import (SERVERS, RunningServer, child_env, kill_token, mcprun_command, pids_with_token, run_async,
                      run_cli, serving, wait_for)

PID_SERVER = "pid_server.py"
WORKERS = ("--workers", "2", "--stateless")
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


async def call_pid(url: str, tool: str = "pid", arguments: dict | None = None) -> int:
    """Call one of the test server's tools through fastmcp's Client; return the PID that answered."""
    from fastmcp import Client

    async with Client(url) as client:
        result = await client.call_tool(tool, arguments or {})
    return int(result.content[0].text)


def answering_pids(url: str, wanted: int, timeout: float = 30) -> set:
    """Call from 4 concurrent clients, each call holding its worker's loop a moment, until `wanted` PIDs answered."""
    seen: set = set()
    deadline = time.monotonic() + timeout
    while len(seen) < wanted and time.monotonic() < deadline:
        async def burst():
            return await asyncio.gather(*(call_pid(url, "busy_pid", {"seconds": 0.2}) for _ in range(4)))

        seen.update(run_async(burst()))
    return seen


def raw_call(url: str, request_id: int = 1) -> int:
    """One tools/call 'pid' on a new connection, stdlib only (stateless servers need no session)."""
    parsed = http.client.urlsplit(url)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
    try:
        body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                           "params": {"name": "pid", "arguments": {}}})
        connection.request("POST", parsed.path, body=body, headers=HEADERS)
        response = connection.getresponse()
        text = response.read().decode()
    finally:
        connection.close()
    assert response.status == 200, text
    data = [line[6:] for line in text.splitlines() if line.startswith("data: ")] or [text]
    return int(json.loads(data[-1])["result"]["content"][0]["text"])


class Caller:
    """Threads calling 'pid' on new connections until stopped; counts answers, refusals and other failures."""

    def __init__(self, url: str, threads: int = 3) -> None:
        self.url = url
        self.pids: list[int] = []
        self.refused = 0
        self.failures: list[tuple[int, str]] = []  # (thread, error)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self, thread: int) -> None:
        while not self._stop.is_set():
            try:
                self.pids.append(raw_call(self.url))
            except ConnectionRefusedError:
                self.refused += 1
            except Exception as exc:  # noqa: BLE001 - reported by the test
                self.failures.append((thread, repr(exc)))
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(40)


def no_process_left(token: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while pids_with_token(token):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# -- serving with workers -------------------------------------------------------


def test_two_workers_answer_concurrent_clients(token):
    with serving(token, PID_SERVER, *WORKERS, cwd=SERVERS) as server:
        assert re.search(r"^mcprun: ready: serving 'Pids' from pid_server.py over streamable HTTP at "
                         r"http://127\.0\.0\.1:\d+/mcp \(2 workers\)$", server.stderr, re.M), server.stderr
        assert server.stderr.count("mcprun: ready:") == 1
        assert len(answering_pids(server.url, 2)) == 2
        assert server.stop() == 0, server.stderr


def test_a_server_that_starts_itself_is_served_by_every_worker(token, tmp_path):
    # each worker runs the script, whose own mcp.run() mcprun catches and serves on the shared socket
    (tmp_path / "starts_itself.py").write_text(
        (SERVERS / "pid_server.py").read_text() + '\n\nif __name__ == "__main__":\n    mcp.run(transport="sse")\n')
    with serving(token, "--script", "starts_itself.py", *WORKERS, cwd=tmp_path) as server:
        assert re.search(r"^mcprun: ready: serving 'Pids' from starts_itself.py over streamable HTTP at "
                         r"http://127\.0\.0\.1:\d+/mcp \(2 workers\)$", server.stderr, re.M), server.stderr
        assert len(answering_pids(server.url, 2)) == 2
        assert server.stop() == 0, server.stderr


def test_a_killed_worker_is_replaced_and_calls_keep_succeeding(token):
    with serving(token, PID_SERVER, *WORKERS, cwd=SERVERS) as server:
        before = answering_pids(server.url, 2)
        assert len(before) == 2
        caller = Caller(server.url)
        try:
            wait_for(lambda: len(caller.pids) >= 5, what="calls before the kill")
            victim = sorted(before)[0]
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: f"worker {victim} was killed by SIGKILL; starting another" in server.stderr,
                     what="the supervisor noticing")
            wait_for(lambda: set(caller.pids) - before, what="a new worker answering")
        finally:
            caller.stop()
        # each client loses at most the call it had in flight in the killed worker
        assert all(sum(n == thread for n, _ in caller.failures) <= 1 for thread in range(3)), caller.failures
        assert caller.refused == 0
        assert victim not in answering_pids(server.url, 2)
        assert server.stop() == 0, server.stderr


def test_sigterm_lets_the_call_in_flight_finish_and_leaves_no_process(token, tmp_path):
    started = tmp_path / "started"
    with serving(token, PID_SERVER, *WORKERS, cwd=SERVERS) as server:
        outcome: dict = {}

        def slow_call():
            try:
                outcome["pid"] = run_async(call_pid(server.url, "slow_pid", {"seconds": 2, "started": str(started)}))
            except Exception as exc:  # noqa: BLE001 - reported below
                outcome["error"] = exc

        thread = threading.Thread(target=slow_call, daemon=True)
        thread.start()
        wait_for(started.exists, what="the call in flight")
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(30) == 0, server.stderr
        thread.join(30)
        assert isinstance(outcome.get("pid"), int), outcome
        assert no_process_left(token)
        assert "Traceback" not in server.stderr


def test_second_sigint_stops_the_workers_at_once(token, tmp_path):
    started = tmp_path / "started"
    with serving(token, PID_SERVER, *WORKERS, "--graceful-timeout", "60", cwd=SERVERS) as server:
        def hanging_call():
            with contextlib.suppress(Exception):  # it ends when the server stops at once
                run_async(call_pid(server.url, "slow_pid", {"seconds": 60, "started": str(started)}))

        threading.Thread(target=hanging_call, daemon=True).start()
        wait_for(started.exists, what="the call in flight")
        address = http.client.urlsplit(server.url)
        keep_alive = http.client.HTTPConnection(address.hostname, address.port, timeout=10)  # sees its worker drain

        def readiness() -> int:
            keep_alive.request("GET", "/readyz")
            response = keep_alive.getresponse()
            response.read()
            return response.status

        def draining() -> bool:
            try:
                return readiness() == 503
            except (OSError, http.client.HTTPException):  # its worker, with no call in flight, drained and stopped
                return True

        assert readiness() == 200
        server.process.send_signal(signal.SIGINT)
        wait_for(draining, timeout=5, what="the drain")
        keep_alive.close()
        assert server.process.poll() is None  # draining, for up to 60 s
        server.process.send_signal(signal.SIGTERM)  # systemd's SIGTERM to every process of the service: no force
        time.sleep(0.5)
        assert server.process.poll() is None
        server.process.send_signal(signal.SIGINT)
        server.process.wait(15)  # well before the grace period ends
        assert no_process_left(token)


def test_sighup_replaces_workers_without_refusing_a_connection(token):
    with serving(token, PID_SERVER, *WORKERS, cwd=SERVERS) as server:
        before = answering_pids(server.url, 2)
        caller = Caller(server.url)
        try:
            wait_for(lambda: len(caller.pids) >= 10, what="calls before SIGHUP")
            server.process.send_signal(signal.SIGHUP)
            wait_for(lambda: "mcprun: reload: 2 workers replaced" in server.stderr, what="the reload")
            count = len(caller.pids)
            wait_for(lambda: len(caller.pids) >= count + 10, what="calls after the reload")
        finally:
            caller.stop()
        assert caller.refused == 0
        assert caller.failures == []
        after = answering_pids(server.url, 2)
        assert after and not after & before, (before, after)
        assert "SIGHUP: replacing the 2 workers one at a time" in server.stderr
        assert server.stop() == 0, server.stderr


def test_sighup_with_broken_code_keeps_serving_then_picks_up_the_fix(token, tmp_path):
    server_file = tmp_path / "server.py"
    source = (SERVERS / PID_SERVER).read_text()
    server_file.write_text(source)
    with serving(token, "server.py", *WORKERS, cwd=tmp_path) as server:
        before = answering_pids(server.url, 2)
        server_file.write_text(source + "\ndef broken(:\n")
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "mcprun: warning: a new worker could not start: syntax error in server.py" in server.stderr,
                 what="the failed start")
        assert run_async(call_pid(server.url)) in before  # the old workers still serve
        wait_for(lambda: "trying again in 1 s" in server.stderr, what="a longer pause")
        server_file.write_text(source.replace('"Pids"', '"Fixed"'))
        wait_for(lambda: "mcprun: reload: 2 workers replaced" in server.stderr, what="the reload")
        assert not answering_pids(server.url, 2) & before
        assert server.stop() == 0, server.stderr


def test_first_workers_that_cannot_start_end_the_run_with_their_error(token):
    result = run_cli(token, "broken/syntax_error.py", "-t", "http", "-p", "0", *WORKERS, cwd=SERVERS)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == ["mcprun: error: syntax error in broken/syntax_error.py:6: invalid syntax; "
                                          "rerun with --log-level DEBUG for the traceback"]
    assert no_process_left(token)


# -- refusals -------------------------------------------------------------------


@pytest.mark.parametrize("args, env, message", [
    (["-t", "http", "--workers", "2"], {},
     "--workers 2 needs --stateless: a streamable-HTTP session lives in one worker"),
    (["-t", "sse", "--workers", "3"], {}, "--workers 3 does not work with SSE"),
    (["--workers", "2", "--stateless"], {}, "--workers 2 needs --transport http"),
    (["-t", "http", "--stateless", "--reload"], {"MCPRUN_WORKERS": "2"},
     "--reload and --workers 2 exclude each other"),
    (["-t", "http"], {"MCPRUN_WORKERS": "none"}, "MCPRUN_WORKERS='none': 'none' is not a number of workers"),
])
def test_refused_combinations_are_one_line_errors(token, args, env, message):
    result = run_cli(token, PID_SERVER, *args, cwd=SERVERS, env=child_env(token, **env))
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcprun: error: "), result.stderr
    assert message in lines[0], lines[0]


def test_bad_workers_value_is_an_argparse_error(token):
    result = run_cli(token, PID_SERVER, "--workers", "0", cwd=SERVERS)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == ("mcprun: error: argument -w/--workers: '0' is not a number of "
                                              "workers (1, 2, ... or auto)")


@pytest.mark.parametrize("args, env", [(["--workers", "auto"], {}), ([], {"MCPRUN_WORKERS": "auto"})])
def test_workers_auto_is_the_usable_cores(token, args, env):
    result = run_cli(token, PID_SERVER, "-t", "http", "--stateless", *args, "--print-config", cwd=SERVERS,
                     env=child_env(token, **env))
    assert result.returncode == 0, result.stderr
    found = re.search(r"^workers\s+= (\d+)  \((command line|MCPRUN_WORKERS)\)$", result.stdout, re.M)
    assert found, result.stdout
    assert 1 <= int(found[1]) <= len(os.sched_getaffinity(0))


# -- systemd ----------------------------------------------------------------------

# Puts the socket on fd 3 and names this process in LISTEN_PID, as systemd does, then becomes mcprun.
SYSTEMD_LIKE = ("import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_PID'] = str(os.getpid()); "
                "os.execvp(sys.argv[2], sys.argv[2:])")


@pytest.mark.parametrize("workers", [[], list(WORKERS)])
def test_socket_activation_serves_on_the_socket_systemd_passes(token, workers):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    command = [sys.executable, "-c", SYSTEMD_LIKE, str(listener.fileno()), *mcprun_command(), PID_SERVER,
               "-t", "http", "--port", "1", *workers]
    process = subprocess.Popen(command, cwd=SERVERS, env=child_env(token, LISTEN_FDS="1"), pass_fds=(listener.fileno(),),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    listener.close()  # mcprun holds it now
    server = RunningServer(process)
    try:
        url = server.wait_ready()
        assert url == f"http://127.0.0.1:{port}/mcp"
        assert re.search(rf"^mcprun: ready: .* at {url} \((2 workers, )?socket from systemd\)$", server.stderr, re.M)
        assert isinstance(run_async(call_pid(url)), int)
        assert server.stop() == 0, server.stderr
    finally:
        server.stop()
        kill_token(token)


@pytest.mark.parametrize("workers", [[], list(WORKERS)])
def test_sd_notify_reports_ready_then_stopping(token, workers):
    name = f"mcprun-test-{token}"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind("\0" + name)
    notify.settimeout(60)
    try:
        with serving(token, PID_SERVER, *workers, cwd=SERVERS, env=child_env(token, NOTIFY_SOCKET="@" + name)) as server:
            ready = notify.recv(4096).decode().split("\n")
            assert ready[0] == "READY=1" and re.fullmatch(r"MAINPID=\d+", ready[1]), ready
            assert ready[1] == f"MAINPID={server.process.pid}"  # the binary's launcher execs: one process
            assert isinstance(run_async(call_pid(server.url)), int)
            server.process.send_signal(signal.SIGTERM)
            assert notify.recv(4096) == b"STOPPING=1"  # nothing else in between: workers stay silent
            assert server.process.wait(30) == 0, server.stderr
    finally:
        notify.close()
