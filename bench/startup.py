"""Start-up to the first successful tools/list over stdio, for any runner command, side by side.

    python bench/startup.py --runs 7 --cwd tests/servers \
        --runner "fastmcp run=.venv/bin/fastmcp run fastmcp_server.py --no-banner" \
        --runner "mcprun=.venv/bin/python ../../mcprun.py fastmcp_server.py"

Stdlib only, and no mcprun internals: each runner is a command line that serves MCP on
stdin/stdout. Runs are interleaved (runner A, B, C, A, B, C, ...) so that load on a shared
machine hits every runner alike; the report gives medians and the ratio to the first runner.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "bench", "version": "1"}}}
INITIALIZED = {"jsonrpc": "2.0", "method": "notifications/initialized"}
TOOLS_LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


def time_to_tools_list(command: list[str], cwd: str | None, timeout: float) -> float:
    """Start command, initialize, list tools; return the seconds until the tools/list reply."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        for message in (INITIALIZE, INITIALIZED, TOOLS_LIST):
            process.stdin.write(json.dumps(message) + "\n")
        process.stdin.flush()
        deadline = started + timeout
        for line in process.stdout:
            reply = json.loads(line)
            if reply.get("id") == 2:
                if "result" not in reply:
                    raise RuntimeError(f"{command}: tools/list failed: {reply}")
                return time.perf_counter() - started
            if time.perf_counter() > deadline:
                break
        raise RuntimeError(f"{command}: no tools/list reply within {timeout}s")
    finally:
        process.kill()
        process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runner", action="append", required=True, metavar="NAME=COMMAND",
                        help="a runner to measure; the first is the baseline")
    parser.add_argument("--runs", type=int, default=7, help="runs per runner (default: %(default)s)")
    parser.add_argument("--cwd", help="folder to start the runners in")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per run (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the raw samples as JSON too")
    args = parser.parse_args()
    runners = [(name, shlex.split(command)) for name, _, command in (r.partition("=") for r in args.runner)]
    samples = {name: [] for name, _ in runners}
    for _ in range(args.runs):
        for name, command in runners:
            samples[name].append(time_to_tools_list(command, args.cwd, args.timeout))
    baseline = statistics.median(samples[runners[0][0]])
    print(f"start-up to first tools/list over stdio, {args.runs} interleaved runs each, "
          f"{os.cpu_count()} cpus, Python {sys.version.split()[0]}")
    print(f"{'runner':<24} {'median s':>9} {'min s':>7} {'max s':>7} {'ratio':>6}")
    for name, _ in runners:
        values = samples[name]
        print(f"{name:<24} {statistics.median(values):9.3f} {min(values):7.3f} {max(values):7.3f} "
              f"{statistics.median(values) / baseline:6.2f}")
    if args.json:
        print(json.dumps(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
