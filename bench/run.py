"""Benchmark MCP runners side by side: start-up, call latency, throughput, memory, CPU, scaling.

    python3 bench/run.py --quick \\
        --runner "fastmcp run=.venv/bin/fastmcp run {server} --no-banner" \\
        --runner "python server.py=.venv/bin/python {server_file}" \\
        --runner "mcprun.py=.venv/bin/python mcprun.py {server}" \\
        --runner "pyz=python3 dist/mcprun.pyz {server}" --cold pyz=SHIV_ROOT \\
        --runner "binary=dist/mcprun {server}" --cold binary=MCPRUN_CACHE

A runner is NAME=COMMAND: a command line in which {server} (the spec, a file path) and
{server_file} (the same file) name bench/servers/bench_server.py. It serves stdio as given; for
HTTP the harness appends "--transport http --port PORT" with a free port it picked, and polls
that port until initialize succeeds. Every phase runs the runners interleaved (A, B, C, A, B, C,
...), so load on a shared machine hits each alike (HTTP with 1 client: every server up at once, taking
turns in short blocks); the report gives medians and the ratio to the baseline runner. Stdlib only, and
the client side is raw JSON-RPC: no mcprun, no SDK.
"""

import argparse
import contextlib
import datetime
import http.client
import json
import math
import os
import platform
import selectors
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SERVER = Path(__file__).resolve().parent / "servers" / "bench_server.py"
PROTOCOL = "2025-06-18"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAYLOADS = {"1 KB": 1_000, "100 KB": 100_000, "1 MB": 1_000_000}
TOOL_COUNTS = (10, 100, 1000)
LIST_REPEATS = 5  # tools/list after the first, per start: their median is the listing cost

# quick: < 3 minutes on 2 idle cores with five runners; full: enough runs for steadier medians.
# The stdio and http sessions' own starts add one warm and one http start sample per round.
PROFILES = {
    "quick": {"warm": 2, "cold": 1, "http_start": 0, "rounds": 1, "calls": 300, "http_blocks": 4, "block_calls": 50,
              "clients": 8, "client_calls": 40, "payload_calls": 8, "scale": 1},
    "full": {"warm": 8, "cold": 5, "http_start": 4, "rounds": 3, "calls": 2000, "http_blocks": 15, "block_calls": 200,
             "clients": 8, "client_calls": 200, "payload_calls": 40, "scale": 5},
}


class BenchError(Exception):
    """A runner failed a measurement: it did not start, answer or list its tools in time."""


# runners and their processes

class Runner:
    """One way to serve the bench server: a name, a command template, an optional cold-start variable."""

    def __init__(self, spec: str):
        name, sep, template = spec.partition("=")
        if not sep or not name.strip() or not template.strip():
            raise SystemExit(f"bench: error: --runner wants NAME=COMMAND, got {spec!r}")
        self.name, self.template, self.cold_var, self.http_only = name.strip(), template.strip(), None, False

    def argv(self, http_port: int | None = None) -> list[str]:
        server = os.path.relpath(SERVER)
        server = str(SERVER) if server.startswith("..") else server  # relative only below the current folder
        words = [w.replace("{server}", server).replace("{server_file}", server)
                 for w in shlex.split(self.template)]
        if http_port is not None:
            words += ["--transport", "http", "--port", str(http_port)]
        return words


class Served:
    """A runner's process (a new session, so its whole tree can be found and killed), its output in a file."""

    def __init__(self, runner: Runner, tools: int, http_port: int | None = None, env: dict | None = None):
        self.runner = runner
        self.stderr = tempfile.TemporaryFile()
        full_env = dict(os.environ, BENCH_TOOLS=str(tools), **(env or {}))
        self.started = time.perf_counter()
        # over HTTP, stdout goes to the file too: a pipe nobody reads fills up (64 KiB of uvicorn's access
        # log on stdout, about 1,100 calls) and blocks the server
        stdout = subprocess.PIPE if http_port is None else self.stderr
        try:
            self.process = subprocess.Popen(runner.argv(http_port), stdin=subprocess.PIPE, stdout=stdout,
                                            stderr=self.stderr, env=full_env, start_new_session=True)
        except OSError:
            self.stderr.close()
            raise
        try:
            self.tree = TreeWatch(self.process.pid)
        except BaseException:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)
            raise

    def failure(self, what: str) -> BenchError:
        self.stderr.seek(0)
        tail = self.stderr.read().decode(errors="replace").strip().splitlines()[-5:]
        code = self.process.poll()
        exited = f" (exited {code})" if code is not None else ""
        return BenchError(f"{self.runner.name}: {what}{exited}" + "".join(f"\n    {line}" for line in tail))

    def close(self) -> None:
        """Stop the tree: SIGTERM (bootloaders clean their unpacked files), then SIGKILL after 5 s."""
        self.tree.stop()
        for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(grace)
                # the leader is gone; give its group (staticx/PyInstaller children) a moment, then move on
                deadline = time.monotonic() + grace
                while _group_alive(self.process.pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
                if not _group_alive(self.process.pid):
                    break
            except subprocess.TimeoutExpired:
                continue
        for stream in (self.process.stdin, self.process.stdout):
            try:
                if stream and not stream.closed:
                    stream.close()
            except OSError:
                pass
        self.stderr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _stat(pid: str) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is field 3, state)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rpartition(b")")[2].split()
    except OSError:
        return None


class TreeWatch:
    """Peak RSS and CPU time of a process tree (every process in one session), from /proc.

    A thread sums VmRSS over the tree every 0.1 s and keeps the peak of that sum, so a bootloader
    and the Python it starts count together but a parent's transient unpacking peak is not added
    to its child's. The tree's members are looked up afresh on each poll during the first 5 s
    (bootloaders start their children then), every second after that.
    """

    def __init__(self, session: int):
        self.session, self.born = str(session).encode(), time.monotonic()
        self.members: list[str] = []
        self.found_at = 0.0
        self.peak_kb = 0
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def pids(self) -> list[str]:
        found = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                fields = _stat(pid)
                if fields and len(fields) > 3 and fields[3] == self.session:
                    found.append(pid)
        return found

    def sample(self) -> None:
        now = time.monotonic()
        if now - self.born < 5 or now - self.found_at > 1:
            self.members, self.found_at = self.pids(), now
        total = 0
        for pid in self.members:
            try:
                with open(f"/proc/{pid}/status", "rb") as file:
                    total += next((int(line.split()[1]) for line in file if line.startswith(b"VmRSS:")), 0)
            except OSError:
                pass
        with self.lock:
            self.peak_kb = max(self.peak_kb, total)

    def _poll(self) -> None:
        while not self.done.wait(0.1):
            self.sample()

    def peak_mb(self) -> float:
        self.sample()
        with self.lock:
            return self.peak_kb / 1024

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the live processes in the tree."""
        total = 0
        for pid in self.pids():
            fields = _stat(pid)
            if fields and len(fields) > 12:
                total += int(fields[11]) + int(fields[12])
        return total / CLOCK_TICKS

    def stop(self) -> None:
        self.done.set()
        self.thread.join(2)


# clients: raw JSON-RPC over stdio and streamable HTTP

INITIALIZE_PARAMS = {"protocolVersion": PROTOCOL, "capabilities": {},
                     "clientInfo": {"name": "mcprun-bench", "version": "1"}}


class StdioClient:
    """Newline-delimited JSON-RPC on a process's stdin/stdout; every read has a deadline."""

    def __init__(self, served: Served, timeout: float):
        self.served, self.timeout, self.next_id, self.buffer = served, timeout, 0, b""
        self.out = served.process.stdout.fileno()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.out, selectors.EVENT_READ)

    def send(self, message: dict) -> None:
        try:
            self.served.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.served.process.stdin.flush()
        except BrokenPipeError:
            raise self.served.failure("closed stdin") from None

    def _line(self, deadline: float) -> bytes:
        while b"\n" not in self.buffer:
            left = deadline - time.perf_counter()
            if left <= 0 or not self.selector.select(left):
                raise self.served.failure(f"no reply within {self.timeout:g} s")
            chunk = os.read(self.out, 1 << 20)
            if not chunk:
                raise self.served.failure("closed stdout")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def request(self, method: str, params: dict | None = None) -> dict:
        self.next_id += 1
        message = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)
        deadline = time.perf_counter() + self.timeout
        while True:
            line = self._line(deadline)
            if not line.strip():
                continue
            reply = json.loads(line)
            if reply.get("id") == self.next_id and ("result" in reply or "error" in reply):
                if "error" in reply:
                    raise self.served.failure(f"{method} failed: {reply['error']}")
                return reply["result"]

    def initialize(self) -> dict:
        result = self.request("initialize", INITIALIZE_PARAMS)
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return result


class HttpClient:
    """Streamable HTTP client on one keep-alive connection: JSON or SSE replies, the mcp-session-id carried."""

    def __init__(self, port: int, timeout: float, path: str = "/mcp"):
        self.port, self.path, self.timeout = port, path, timeout
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.session, self.protocol, self.next_id = None, None, 0

    def post(self, message: dict) -> dict | None:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.session:
            headers["mcp-session-id"] = self.session
        if self.protocol:
            headers["mcp-protocol-version"] = self.protocol
        self.connection.request("POST", self.path, json.dumps(message).encode(), headers)
        response = self.connection.getresponse()
        body = response.read()
        if response.status >= 400:
            raise BenchError(f"HTTP {response.status} for {message.get('method')}: {body[:200]!r}")
        self.session = response.getheader("mcp-session-id") or self.session
        if "id" not in message:
            return None
        if (response.getheader("content-type") or "").startswith("text/event-stream"):
            replies = [json.loads(data) for data in _sse_data(body)]
        else:
            replies = [json.loads(body)]
        for reply in replies:
            if isinstance(reply, dict) and reply.get("id") == message["id"]:
                if "error" in reply:
                    raise BenchError(f"{message['method']} failed: {reply['error']}")
                return reply["result"]
        raise BenchError(f"no reply to {message['method']} in {body[:200]!r}")

    def request(self, method: str, params: dict | None = None) -> dict:
        self.next_id += 1
        message = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            message["params"] = params
        return self.post(message)

    def initialize(self) -> dict:
        result = self.request("initialize", INITIALIZE_PARAMS)
        self.protocol = result.get("protocolVersion", PROTOCOL)
        self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return result

    def close(self) -> None:
        self.connection.close()


def _sse_data(body: bytes) -> list[str]:
    """The data of each event in an SSE body (multi-line data joined by newlines)."""
    events = []
    for block in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [line[5:].lstrip(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
        if lines:
            events.append(b"\n".join(lines).decode())
    return events


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(served: Served, port: int, timeout: float) -> tuple[HttpClient, float]:
    """Poll the port every 5 ms until initialize succeeds; return the client and seconds since start."""
    deadline = served.started + timeout
    while True:
        if served.process.poll() is not None:
            raise served.failure("exited before serving HTTP")
        client = HttpClient(port, timeout=max(1.0, deadline - time.perf_counter()))
        try:
            client.initialize()
            return client, time.perf_counter() - served.started
        except (ConnectionError, http.client.HTTPException, BenchError, OSError):
            client.close()
        if time.perf_counter() > deadline:
            raise served.failure(f"no HTTP initialize on port {port} within {timeout:g} s")
        time.sleep(0.005)


# measurements

def _time_calls(call, count: int) -> tuple[list[float], float]:
    latencies = []
    begun = time.perf_counter()
    for _ in range(count):
        before = time.perf_counter()
        call()
        latencies.append((time.perf_counter() - before) * 1000)
    return latencies, time.perf_counter() - begun


def _start_and_list(served: Served, client: StdioClient, tools: int) -> dict:
    """Initialize, list the tools: seconds from start to the first list, its round trip, that of later lists."""
    client.initialize()
    before = time.perf_counter()
    listed = client.request("tools/list")
    after = time.perf_counter()
    if len(listed.get("tools", [])) != tools:
        raise served.failure(f"listed {len(listed.get('tools', []))} tools, expected {tools}")
    again = _time_calls(lambda: client.request("tools/list"), LIST_REPEATS)[0]
    return {"start_s": after - served.started, "list_ms": (after - before) * 1000,
            "list_again_ms": statistics.median(again)}


def stdio_start(runner: Runner, tools: int, timeout: float, env: dict | None = None) -> dict:
    """Start over stdio to the first tools/list reply (and the lists' round trips), then the exit after EOF."""
    with Served(runner, tools, env=env) as served:
        result = _start_and_list(served, StdioClient(served, timeout), tools)
        result["exit_ms"] = _exit_after_eof(served, timeout)
        return result


def _exit_after_eof(served: Served, timeout: float) -> float:
    """Close the server's stdin, as a client does when it is done: milliseconds until its process is gone."""
    before = time.perf_counter()
    served.process.stdin.close()
    try:
        served.process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise served.failure(f"still running {timeout:g} s after stdin closed") from None
    return (time.perf_counter() - before) * 1000


def http_start(runner: Runner, timeout: float) -> float:
    port = free_port()
    with Served(runner, 10, http_port=port) as served:
        client, seconds = wait_http(served, port, timeout)
        client.close()
        return seconds


def _echo(client) -> None:
    result = client.request("tools/call", {"name": "echo", "arguments": {"text": "ping"}})
    if result.get("isError") or result["content"][0]["text"] != "ping":
        raise BenchError(f"echo returned {result!r:.200}")


def stdio_session(runner: Runner, profile: dict, timeout: float) -> dict:
    """One stdio server: its start (a warm sample), versions, tools/call latency, CPU, payloads, peak RSS."""
    with Served(runner, 10) as served:
        client = StdioClient(served, timeout)
        start = _start_and_list(served, client, 10)
        versions = json.loads(client.request("tools/call", {"name": "versions", "arguments": {}})
                              ["content"][0]["text"])
        for _ in range(20):
            _echo(client)
        cpu = served.tree.cpu_seconds()
        latencies, elapsed = _time_calls(lambda: _echo(client), profile["calls"])
        cpu = served.tree.cpu_seconds() - cpu
        result = {"start": start, "versions": versions, "latency_ms": latencies,
                  "calls_per_s": len(latencies) / elapsed, "cpu_s_per_1000": cpu / len(latencies) * 1000,
                  "rss_mb": served.tree.peak_mb(), "payload_ms": {}}
        for label, size in PAYLOADS.items():
            result["payload_ms"][label] = _time_payloads(client, size, profile["payload_calls"])
        return result


def _time_payloads(client, size: int, count: int) -> list[float]:
    """Latencies of count calls of the payload tool returning size characters (after one not counted)."""
    def call():
        reply = client.request("tools/call", {"name": "payload", "arguments": {"size": size}})
        if len(reply["content"][0]["text"]) != size:
            raise BenchError(f"payload of {size} returned {len(reply['content'][0]['text'])} characters")
    call()
    return _time_calls(call, count)[0]


def http_session(runner: Runner, profile: dict, timeout: float) -> dict:
    """One HTTP server: its start, 1 MB results, then N concurrent clients; CPU, peak RSS."""
    port = free_port()
    with Served(runner, 10, http_port=port) as served:
        client, start_s = wait_http(served, port, timeout)
        try:
            for _ in range(20):
                _echo(client)
            payload_ms = _time_payloads(client, PAYLOADS["1 MB"], profile["payload_calls"])
        finally:
            client.close()
        result = {"start_s": start_s, "payload_ms": payload_ms}
        clients = [HttpClient(port, timeout) for _ in range(profile["clients"])]
        samples = [[] for _ in clients]
        errors = []
        gate = threading.Barrier(len(clients) + 1, timeout=timeout)

        def work(index: int) -> None:
            try:
                clients[index].initialize()
                for _ in range(5):
                    _echo(clients[index])
                gate.wait()
                samples[index].extend(_time_calls(lambda: _echo(clients[index]), profile["client_calls"])[0])
            except Exception as error:  # reported after the threads are joined
                errors.append(error)
                gate.abort()

        threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(len(clients))]
        try:
            for thread in threads:
                thread.start()
            try:
                gate.wait()
            except threading.BrokenBarrierError:
                pass
            begun, cpu = time.perf_counter(), served.tree.cpu_seconds()
            for thread in threads:
                thread.join(max(0.0, begun + timeout - time.perf_counter()))
            elapsed, cpu = time.perf_counter() - begun, served.tree.cpu_seconds() - cpu
        finally:
            for each in clients:
                each.close()
        if errors or any(thread.is_alive() for thread in threads):
            raise served.failure(f"{len(clients)} clients: {errors[0] if errors else 'timed out'}")
        pooled = [value for sample in samples for value in sample]
        result.update({"concurrent_latency_ms": pooled, "concurrent_calls_per_s": len(pooled) / elapsed,
                       "concurrent_cpu_s_per_1000": cpu / len(pooled) * 1000, "rss_mb": served.tree.peak_mb()})
        return result


def http_one_client(runners: list[Runner], profile: dict, timeout: float) -> dict:
    """Every runner's HTTP server up at once, one client each, taking turns: in each of http_blocks rounds
    each runner answers block_calls calls (a different runner first each round). Per runner: calls/s and
    CPU per call of each block, and every call's latency. Servers up side by side meet the machine's changes
    of speed alike; one after the other, seconds apart, they did not (the 1-client row moved +-15 %)."""
    with contextlib.ExitStack() as stack:
        up = {}
        for runner in runners:
            port = free_port()
            served = stack.enter_context(Served(runner, 10, http_port=port))
            client, _ = wait_http(served, port, timeout)
            stack.callback(client.close)
            for _ in range(50):
                _echo(client)
            up[runner.name] = served, client
        results = {name: {"latency_ms": [], "calls_per_s": [], "cpu_s_per_1000": []} for name in up}
        names = list(up)
        for block in range(profile["http_blocks"]):
            for name in names[block % len(names):] + names[:block % len(names)]:
                served, client = up[name]
                client.connection.close()  # idle while the others ran: servers close such connections
                _echo(client)  # on a new one, not timed
                cpu = served.tree.cpu_seconds()
                latencies, elapsed = _time_calls(lambda: _echo(client), profile["block_calls"])
                cpu = served.tree.cpu_seconds() - cpu
                results[name]["latency_ms"] += latencies
                results[name]["calls_per_s"].append(len(latencies) / elapsed)
                results[name]["cpu_s_per_1000"].append(cpu / len(latencies) * 1000)
        return results


def cold_start(runner: Runner, timeout: float) -> dict:
    """Start over stdio with runner.cold_var pointing at a fresh empty folder: the first run after install."""
    folder = tempfile.mkdtemp(prefix="mcprun-bench-cold-")
    try:
        return stdio_start(runner, 10, timeout, env={runner.cold_var: folder})
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# report

def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values, share):
    if not values:
        return None
    ordered = sorted(values)  # nearest rank
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def summarize(runners: list[Runner], raw: dict) -> dict:
    """Medians and percentiles per runner, one number per metric (None when not measured)."""
    table = {}
    for runner in runners:
        r = raw[runner.name]
        stdio = r.get("stdio_session", [])
        http = r.get("http_session", [])
        one = r.get("http_one_client", {"latency_ms": [], "calls_per_s": [], "cpu_s_per_1000": []})
        pooled = lambda runs, key: [v for run in runs for v in run[key]]  # noqa: E731
        warm = r.get("warm", []) + [s["start"] for s in stdio]  # a session's start is a warm start too
        row = {
            "stdio start, warm (s)": median([s["start_s"] for s in warm]),
            "stdio start, cold (s)": median([s["start_s"] for s in r.get("cold", [])]),
            "http start to initialize (s)": median(r.get("http_start", []) + [s["start_s"] for s in http]),
            "stdio call p50 (ms)": percentile(pooled(stdio, "latency_ms"), 0.5),
            "stdio call p99 (ms)": percentile(pooled(stdio, "latency_ms"), 0.99),
            "stdio calls/s": median([s["calls_per_s"] for s in stdio]),
            "http 1 client p50 (ms)": percentile(one["latency_ms"], 0.5),
            "http 1 client p99 (ms)": percentile(one["latency_ms"], 0.99),
            "http 1 client calls/s": median(one["calls_per_s"]),
            "http 8 clients p50 (ms)": percentile(pooled(http, "concurrent_latency_ms"), 0.5),
            "http 8 clients p99 (ms)": percentile(pooled(http, "concurrent_latency_ms"), 0.99),
            "http 8 clients calls/s": median([s["concurrent_calls_per_s"] for s in http]),
            "peak RSS, stdio (MB)": median([s["rss_mb"] for s in stdio]),
            "peak RSS, http 8 clients (MB)": median([s["rss_mb"] for s in http]),
            "CPU s / 1000 calls, stdio": median([s["cpu_s_per_1000"] for s in stdio]),
            "CPU s / 1000 calls, http": median(one["cpu_s_per_1000"]),
        }
        for count in TOOL_COUNTS[1:]:
            row[f"stdio start, {count} tools (s)"] = median([s["start_s"] for s in r.get(f"tools_{count}", [])])
        row["first tools/list, 10 tools (ms)"] = median([s["list_ms"] for s in warm])
        row["stdio exit after EOF (ms)"] = median([s["exit_ms"] for s in warm if "exit_ms" in s])
        for count in TOOL_COUNTS:
            starts = warm if count == 10 else r.get(f"tools_{count}", [])
            row[f"tools/list again, {count} tools (ms)"] = median([s["list_again_ms"] for s in starts])
        for label in PAYLOADS:
            row[f"{label} result p50 (ms)"] = percentile([v for run in stdio for v in run["payload_ms"][label]], 0.5)
        row["1 MB result over http p50 (ms)"] = percentile(pooled(http, "payload_ms"), 0.5)
        table[runner.name] = row
    return table


def markdown(runners: list[Runner], table: dict, baseline: str, clients: int) -> str:
    names = [runner.name for runner in runners]
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for metric in table[names[0]]:
        cells = []
        for name in names:
            value, base = table[name][metric], table[baseline][metric]
            if value is None:
                cells.append("–")
                continue
            text = f"{value:.3f}" if "(s)" in metric else f"{value:.0f}" if value >= 100 else f"{value:.2f}" \
                if value < 10 else f"{value:.1f}"
            if name != baseline and base:
                text += f" ({value / base:.2f}×)"
            cells.append(text)
        lines.append(f"| {metric.replace('8 clients', f'{clients} clients')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(runners: list[Runner], table: dict, baseline: str, floor: str) -> list[tuple[str, str, str]]:
    """Issue 7's targets that the measured runners allow checking: (target, measured, verdict)."""
    names = {runner.name for runner in runners}
    rows = []

    def check(label, value, limit, higher_is_better=False):
        if value is None:
            return
        met = value >= limit if higher_is_better else value <= limit
        rows.append((label, f"{value:.2f}", "met" if met else "missed"))

    def ratio(name_a, metric_a, name_b, metric_b=None):
        if name_a not in names or name_b not in names:
            return None
        a, b = table[name_a][metric_a], table[name_b][metric_b or metric_a]
        return a / b if a is not None and b else None

    def own(name, metric):
        return table[name][metric] if name in names else None

    warm = "stdio start, warm (s)"
    for artifact in ("pyz", "binary"):
        check(f"{artifact} warm start ≤ 0.70× {baseline}", ratio(artifact, warm, baseline), 0.70)
        check(f"{artifact} warm start ≤ 1.0× {floor}", ratio(artifact, warm, floor), 1.0)
        check(f"{artifact} cold start ≤ 3× its warm", ratio(artifact, "stdio start, cold (s)", artifact, warm), 3)
    check("binary warm start ≤ 1.3× pyz warm", ratio("binary", warm, "pyz"), 1.3)
    for runner in runners:
        name = runner.name
        if name in (baseline, floor):
            continue
        check(f"{name}: first tools/list ≤ 120 ms", own(name, "first tools/list, 10 tools (ms)"), 120)
        check(f"{name}: exit after stdin EOF ≤ 100 ms", own(name, "stdio exit after EOF (ms)"), 100)
        for mode in ("http 1 client", "http 8 clients"):
            check(f"{name}: {mode} calls/s ≥ 1.3× {baseline}", ratio(name, f"{mode} calls/s", baseline), 1.3, True)
            check(f"{name}: {mode} p99 ≤ {baseline}", ratio(name, f"{mode} p99 (ms)", baseline), 1.0)
        check(f"{name}: peak RSS (stdio) ≤ {baseline}", ratio(name, "peak RSS, stdio (MB)", baseline), 1.0)
        check(f"{name}: peak RSS (http) ≤ {baseline}", ratio(name, "peak RSS, http 8 clients (MB)", baseline), 1.0)
        # linear: 10x the tools at most 15x the tools/list time; start-up per tool no dearer than the baseline's
        list_100, list_1000 = (table[name][f"tools/list again, {n} tools (ms)"] for n in TOOL_COUNTS[1:])
        if list_100 and list_1000:
            check(f"{name}: tools/list linear: 1000 tools ÷ 100 tools ≤ 15 (10× the tools)",
                  list_1000 / list_100, 15)
        start_10, start_1000 = table[name]["stdio start, warm (s)"], table[name]["stdio start, 1000 tools (s)"]
        base_10, base_1000 = table[baseline]["stdio start, warm (s)"], table[baseline]["stdio start, 1000 tools (s)"]
        if None not in (start_10, start_1000, base_10, base_1000) and base_1000 > base_10:
            check(f"{name}: start-up cost per tool (10→1000) ≤ {baseline}'s",
                  (start_1000 - start_10) / (base_1000 - base_10), 1.0)
    return rows


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as file:
            model = next((line.split(":", 1)[1].strip() for line in file if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{platform.system()} {platform.release()} {platform.machine()}, {model}, {os.cpu_count()} cpus"


# main

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runner", action="append", required=True, metavar="NAME=COMMAND",
                        help="a runner to measure, repeatable; {server}/{server_file} name the bench server")
    parser.add_argument("--cold", action="append", default=[], metavar="NAME=VAR",
                        help="runner NAME unpacks into the folder environment variable VAR names: each cold "
                             "run points VAR at a fresh empty folder (pyz: SHIV_ROOT, binary: MCPRUN_CACHE)")
    parser.add_argument("--http-only", action="append", default=[], metavar="NAME",
                        help="runner NAME takes part in the HTTP measurements only (its command has an option "
                             "stdio refuses, such as mcprun's --json-response)")
    parser.add_argument("--baseline", metavar="NAME",
                        help="runner the ratios compare with (default: 'fastmcp run' if given, else the first runner)")
    parser.add_argument("--floor", default="python server.py", metavar="NAME",
                        help="runner serving the file by itself, for the targets (default: %(default)s)")
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument("--quick", action="store_const", dest="profile", const="quick",
                         help="few runs: under 3 minutes on 2 idle cores with five runners")
    profile.add_argument("--full", action="store_const", dest="profile", const="full",
                         help="more runs for steadier medians (the default)")
    parser.add_argument("--phases", metavar="LIST", default="warm,cold,http-start,calls,scaling",
                        help="comma-separated subset of: warm, cold, http-start, calls, scaling (default: all)")
    parser.add_argument("--timeout", type=float, default=60, metavar="SECONDS",
                        help="seconds any one step may take (default: %(default)s)")
    parser.add_argument("--json", metavar="FILE", help="write the raw samples and the summary to FILE")
    args = parser.parse_args(argv)
    args.profile = args.profile or "full"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    runners = [Runner(spec) for spec in args.runner]
    by_name = {runner.name: runner for runner in runners}
    if len(by_name) != len(runners):
        raise SystemExit("bench: error: two runners have the same name")
    for spec in args.cold:
        name, _, var = spec.partition("=")
        if name not in by_name or not var:
            raise SystemExit(f"bench: error: --cold {spec!r}: wants NAME=VAR for a runner NAME given with --runner")
        by_name[name].cold_var = var
    for name in args.http_only:
        if name not in by_name:
            raise SystemExit(f"bench: error: --http-only {name!r}: not a runner given with --runner")
        by_name[name].http_only = True
    baseline = args.baseline or ("fastmcp run" if "fastmcp run" in by_name else runners[0].name)
    if baseline not in by_name:
        raise SystemExit(f"bench: error: --baseline {baseline!r} is not a runner")
    phases = set(args.phases.split(","))
    profile = PROFILES[args.profile]
    raw = {runner.name: {} for runner in runners}
    errors = []
    started = time.monotonic()
    header, load_before = machine(), os.getloadavg()[0]

    def progress(text):
        print(f"[{time.monotonic() - started:6.1f}s] {text}", file=sys.stderr, flush=True)

    broken = set()  # runners that failed the warm-up sit out the rest

    def interleave(key, runs, measure, only=lambda runner: not runner.http_only):
        for _ in range(runs):
            for runner in runners:
                if runner.name in broken or not only(runner):
                    continue
                try:
                    raw[runner.name].setdefault(key, []).append(measure(runner))
                except (BenchError, OSError, http.client.HTTPException, ValueError, LookupError, TypeError) as error:
                    message = f"{key}: {error if isinstance(error, BenchError) else f'{runner.name}: {error!r}'}"
                    errors.append(message)
                    progress(f"error: {message}")
                    if key == "warmup":
                        broken.add(runner.name)

    progress("warm-up: one stdio start per runner (unpacks, fills the page cache)")
    interleave("warmup", 1, lambda r: http_start(r, args.timeout) if r.http_only else
               stdio_start(r, 10, args.timeout), only=lambda r: True)
    if "warm" in phases:
        progress(f"stdio start to tools/list, warm: {profile['warm']} runs each")
        interleave("warm", profile["warm"], lambda r: stdio_start(r, 10, args.timeout))
    if "cold" in phases:
        progress(f"stdio start, cold (fresh unpack folder): {profile['cold']} runs per runner with --cold")
        interleave("cold", profile["cold"], lambda r: cold_start(r, args.timeout),
                   only=lambda r: r.cold_var and not r.http_only)
    if "http-start" in phases and profile["http_start"]:
        progress(f"http start to initialize: {profile['http_start']} runs each")
        interleave("http_start", profile["http_start"], lambda r: http_start(r, args.timeout), only=lambda r: True)
    if "calls" in phases:
        for _ in range(profile["rounds"]):
            progress(f"stdio session: {profile['calls']} calls, payloads {', '.join(PAYLOADS)}")
            interleave("stdio_session", 1, lambda r: stdio_session(r, profile, args.timeout))
            progress(f"http session: {profile['payload_calls']} 1 MB results, then {profile['clients']} clients × "
                     f"{profile['client_calls']} calls")
            interleave("http_session", 1, lambda r: http_session(r, profile, args.timeout), only=lambda r: True)
        progress(f"http, 1 client each, every server up: {profile['http_blocks']} rounds of "
                 f"{profile['block_calls']} calls, the runners in turn")
        try:
            for name, result in http_one_client([r for r in runners if r.name not in broken], profile,
                                                args.timeout).items():
                raw[name]["http_one_client"] = result
        except (BenchError, OSError, http.client.HTTPException, ValueError, LookupError, TypeError) as error:
            errors.append(f"http_one_client: {error}")
            progress(f"error: http_one_client: {error}")
    if "scaling" in phases:
        for count in TOOL_COUNTS[1:]:
            progress(f"stdio start with {count} tools: {profile['scale']} runs each")
            interleave(f"tools_{count}", profile["scale"], lambda r, n=count: stdio_start(r, n, args.timeout))
    elapsed = time.monotonic() - started

    table = summarize(runners, raw)
    print(f"## MCP runners side by side ({args.profile} profile)\n")
    print(f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {elapsed:.0f} s")
    print(f"- machine: {header}, load average {load_before:.2f} at the start, {os.getloadavg()[0]:.2f} at the end")
    print(f"- harness: Python {platform.python_version()}; baseline: {baseline}")
    for runner in runners:
        versions = next((s["versions"] for s in raw[runner.name].get("stdio_session", [])), None)
        ran = f"Python {versions['python']}, fastmcp {versions['fastmcp']}, mcp {versions['mcp']}" if versions \
            else "versions not measured"
        cold = f"; cold: {runner.cold_var}=<empty folder>" if runner.cold_var else ""
        print(f"- {runner.name}: `{shlex.join(runner.argv())}` ({ran}{cold})")
    sessions = profile["rounds"] if "calls" in phases else 0
    done = [f"{profile['warm'] * ('warm' in phases) + sessions} warm starts",
            f"{profile['cold'] * ('cold' in phases)} cold starts",
            f"{profile['http_start'] * ('http-start' in phases) + sessions} http starts"]
    if sessions:
        done += [f"{sessions}×{profile['calls']} stdio calls",
                 f"{profile['http_blocks']}×{profile['block_calls']} http calls (1 client)",
                 f"{sessions}×{profile['clients']} clients × {profile['client_calls']} calls",
                 f"{sessions}×{profile['payload_calls']} calls per payload size"]
    if "scaling" in phases:
        done.append(f"{profile['scale']} starts per tool count")
    print(f"- runs per runner: {', '.join(done)}\n")
    print("Medians (latency: percentiles of all calls); in brackets the ratio to the baseline.\n")
    print(markdown(runners, table, baseline, profile["clients"]))
    checks = targets(runners, table, baseline, args.floor)
    if checks:
        print("\nTargets (issues 7 and 18): ratios, or milliseconds where the target says ms:\n")
        print("| target | measured | |\n|---|---:|---|")
        for label, value, verdict in checks:
            print(f"| {label} | {value} | {verdict} |")
    if errors:
        print("\nErrors:\n")
        for error in errors:
            print("    " + error.replace("\n", "\n    "))
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"profile": args.profile, "machine": header, "baseline": baseline, "elapsed_s": elapsed,
                       "runners": {r.name: {"command": r.template, "cold_var": r.cold_var} for r in runners},
                       "summary": table, "raw": raw}, file, indent=1)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
