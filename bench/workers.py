"""Calls per second from concurrent clients against mcprun --workers N and fastmcp run (stateless HTTP).

Each client is a thread with its own keep-alive connection (stdlib http.client), sending JSON-RPC
tools/call requests one after another for a fixed time; no MCP session is needed in stateless mode.

    .venv/bin/python bench/workers.py                 # mcprun --workers 1, 2, auto and fastmcp run
    .venv/bin/python bench/workers.py --clients 8 --seconds 10 --runs 3
    .venv/bin/python bench/workers.py --new-connections   # a new TCP connection per call

Prints a Markdown table: calls/s (median of the runs), errors, and the ratio to fastmcp run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "servers" / "pid_server.py"
BIN = Path(sys.executable).parent  # the Python running this (.venv/bin/python): its mcprun stack and fastmcp
HEADERS = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


def tools_call(request_id: int, name: str, arguments: dict) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                       "params": {"name": name, "arguments": arguments}}).encode()


def call(connection: http.client.HTTPConnection, path: str, request_id: int) -> int:
    """Send one tools/call 'pid'; return the PID that answered (raises on any failure)."""
    connection.request("POST", path, body=tools_call(request_id, "pid", {}), headers=HEADERS)
    response = connection.getresponse()
    body = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
    for line in body.decode().splitlines():
        if line.startswith("data: "):
            body = line[6:].encode()
    message = json.loads(body)
    return int(message["result"]["content"][0]["text"])


def load(url: str, clients: int, seconds: float, new_connections: bool) -> tuple[float, int, set]:
    """Run `clients` threads calling for `seconds`; return (calls/s, errors, PIDs that answered)."""
    parsed = http.client.urlsplit(url)
    counts, errors, pids = [0] * clients, [0] * clients, set()
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=30)
        start.wait()
        request_id = 0
        while time.monotonic() < stop_at[0]:
            request_id += 1
            try:
                pids.add(call(connection, parsed.path, request_id))
                counts[index] += 1
            except Exception:  # noqa: BLE001 - counted
                errors[index] += 1
                connection.close()
            if new_connections:
                connection.close()
        connection.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.monotonic() + seconds
    began = time.monotonic()
    start.wait()
    for thread in threads:
        thread.join(seconds + 60)
    return sum(counts) / (time.monotonic() - began), sum(errors), pids


def start(command: list[str], env: dict, url: str) -> subprocess.Popen:
    """Start a server and return it once a call on url succeeds (bounded)."""
    process = subprocess.Popen(command, cwd=SERVER.parent, env=env, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    parsed = http.client.urlsplit(url)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            call(http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=5), parsed.path, 0)
            return process
        except (OSError, http.client.HTTPException, ValueError, RuntimeError):
            time.sleep(0.2)
    stop(process)
    raise SystemExit(f"{' '.join(command)} did not serve {url}")


def stop(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)
    except ProcessLookupError:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--port", type=int, default=8931)
    parser.add_argument("--new-connections", action="store_true", help="open a new connection for every call")
    parser.add_argument("--only", help="comma-separated labels to run (e.g. 'workers 2,fastmcp run')")
    args = parser.parse_args()
    env = {**os.environ, "FASTMCP_CHECK_FOR_UPDATES": "off", "FASTMCP_TELEMETRY_MODE": "off"}
    mcprun = [sys.executable, str(ROOT / "mcprun.py"), SERVER.name, "-t", "http", "--stateless",
              "--no-access-log", "-l", "WARNING"]
    setups = [
        ("mcprun --workers 1", [*mcprun, "--workers", "1"]),
        ("mcprun --workers 2", [*mcprun, "--workers", "2"]),
        ("mcprun --workers auto", [*mcprun, "--workers", "auto"]),
        ("fastmcp run", [str(BIN / "fastmcp"), "run", SERVER.name, "--transport", "http", "--log-level", "WARNING",
                         "--stateless", "--no-banner"]),
    ]
    if args.only:
        wanted = [label.strip() for label in args.only.split(",")]
        setups = [(label, command) for label, command in setups if any(w in label for w in wanted)]
    # All servers run at once, each on its own port, idle until its turn; the runs are interleaved
    # (round 1: each server, round 2: each server, ...) so load from elsewhere falls on all of them alike.
    servers = []
    try:
        for index, (label, command) in enumerate(setups):
            url = f"http://127.0.0.1:{args.port + index}/mcp"
            servers.append((label, url, start([*command, "--port", str(args.port + index)], env, url)))
        for label, url, _ in servers:
            load(url, args.clients, args.warmup, args.new_connections)
        runs: dict = {label: [] for label, _, _ in servers}
        for _ in range(args.runs):
            for label, url, _ in servers:
                runs[label].append(load(url, args.clients, args.seconds, args.new_connections))
    finally:
        for _, _, process in servers:
            stop(process)
    results = {}
    for label, measured in runs.items():
        rate = statistics.median(r[0] for r in measured)
        results[label] = (rate, sum(r[1] for r in measured), set().union(*(r[2] for r in measured)))
        print(f"{label}: {rate:.0f} calls/s ({[round(r[0]) for r in measured]}), errors {results[label][1]}, "
              f"{len(results[label][2])} PIDs answered", file=sys.stderr)
    base = results.get("fastmcp run", (None,))[0]
    print(f"\n{args.clients} clients, {args.seconds:g} s x {args.runs} interleaved runs (median), "
          f"{'a new connection per call' if args.new_connections else 'keep-alive connections'}, "
          f"{os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} usable)\n")
    print("| server | calls/s | errors | PIDs answering | vs fastmcp run |")
    print("|---|---:|---:|---:|---:|")
    for label, (rate, errors, pids) in results.items():
        ratio = f"{rate / base:.2f}x" if base else "-"
        print(f"| {label} | {rate:.0f} | {errors} | {len(pids)} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
