"""Record, once, what 8 PyPI MCP servers expose when run natively.

This script is the provenance of the recorded test data: it was run once by
hand, its output was saved, and it is not part of the test suite.

"Natively" means: each package is pip-installed on its own in a fresh venv,
with whatever dependencies pip resolves (no constraints), and started by its
own console script over stdio by the official MCP SDK client that pip
installed into that same venv (the client program below runs under
``<venv>/bin/python``; this outer script uses only the standard library).

For each server the script initializes a session, calls ``tools/list`` and
makes one example tool call that works offline (some servers first need a
setup call or two, e.g. creating a workbook before reading it back; those are
kept in ``setup_calls``). It then starts the server once more and speaks raw
JSON-RPC to it, to record any lines on its stdout that are not JSON-RPC
(``stdout_noise``). Each start is bounded by ``--timeout`` seconds (default
60) and every process the script starts is killed at the end. The result is
printed as JSON and written to ``--out`` (default
``<root>/native_tools.json``): per package its pinned ``version``, ``script``,
``args``, ``env`` (and ``cwd``), the ``mcp_version`` / ``fastmcp_version``
installed in its venv, ``tools`` (sorted names) and ``example_call`` (tool,
arguments, first text content as ``result_text``, all as ``result_texts``,
``is_error``), or ``error`` (stage, message, tail of the server's stderr).

How it was run (Linux x86_64, Python 3.11.7), from the repository root::

    mkdir -p /tmp/native
    for spec in mcp-server-git==2026.10.19 mcp-server-fetch==2026.10.24 \\
                mcp-server-time==2026.10.19 mcp-server-duckdb==1.1.0 \\
                excel-mcp-server==2.2.2 office-word-mcp-server==1.1.11 \\
                markitdown-mcp==0.0.1a8 cli-mcp-server==0.2.5; do
        pkg=${spec%%==*}
        python3 -m venv /tmp/native/$pkg
        /tmp/native/$pkg/bin/pip install "$spec"
        /tmp/native/$pkg/bin/pip freeze > /tmp/native/$pkg.freeze.txt
    done
    python3 tests/corpus/record_native.py            # -> /tmp/native/native_tools.json

With pip's unconstrained resolution (mcp 2.3.0 everywhere) mcp-server-duckdb
and cli-mcp-server crash at startup: they use the low-level ``Server``
decorators (``@server.list_tools()`` ...) that mcp 2.x removed, and their
metadata allow it (``mcp>=1.0.0`` / ``mcp>=1.10.1``). That crash is what the
first run records. To also record their tools they were installed a second
time with ``mcp<2`` and recorded separately::

    mkdir -p /tmp/native-mcp1
    for spec in mcp-server-duckdb==1.1.0 cli-mcp-server==0.2.5; do
        pkg=${spec%%==*}
        python3 -m venv /tmp/native-mcp1/$pkg
        /tmp/native-mcp1/$pkg/bin/pip install "$spec" "mcp<2"
        /tmp/native-mcp1/$pkg/bin/pip freeze > /tmp/native-mcp1/$pkg.freeze.txt
    done
    python3 tests/corpus/record_native.py --root /tmp/native-mcp1 \\
        --only mcp-server-duckdb,cli-mcp-server     # -> /tmp/native-mcp1/native_tools.json

Fixtures (a git repository with two commits at fixed dates, a page served by
``python3 -m http.server`` on 127.0.0.1, and one directory per server) are
rebuilt under ``<root>/fixtures`` on every run. The SDK's stdio client hands
the server only HOME, LOGNAME, PATH, SHELL, TERM and USER from this process's
environment, plus the ``env`` recorded for the server (and a private marker
variable used to find and kill the server's processes afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

DEFAULT_ROOT = Path("/tmp/native")
MARKER = "MCPRUN_NATIVE_RECORD"
# What the SDK's stdio_client passes on from our environment (mcp 1.x and 2.x, POSIX).
SDK_INHERITED_ENV = ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER")

# Runs under <venv>/bin/python. Reads a JSON spec on stdin, prints a JSON result.
# It must work with the mcp 1.x and 2.x clients, so it only touches API both share.
CLIENT = r'''
import json, sys
from importlib import metadata

import anyio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import PaginatedRequestParams


def version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def call_record(name, arguments, result):
    texts = [c.text for c in result.content if getattr(c, "type", None) == "text"]
    is_error = getattr(result, "is_error", None)
    if is_error is None:
        is_error = getattr(result, "isError", False)
    return {"tool": name, "arguments": arguments, "result_text": texts[0] if texts else None,
            "result_texts": texts, "is_error": bool(is_error)}


async def run(spec, out):
    params = StdioServerParameters(command=spec["command"], args=spec["args"],
                                   env=spec["env"], cwd=spec["cwd"])
    stage = "start"
    try:
        with anyio.fail_after(spec["timeout"]):
            async with stdio_client(params) as (read, write):
                async with ClientSession(read, write) as session:
                    stage = "initialize"
                    init = await session.initialize()
                    info = getattr(init, "server_info", None) or getattr(init, "serverInfo", None)
                    out["server_info"] = {"name": info.name, "version": info.version}
                    out["protocol_version"] = (getattr(init, "protocol_version", None)
                                               or getattr(init, "protocolVersion", None))
                    stage = "tools/list"
                    names, cursor = [], None
                    while True:
                        page = PaginatedRequestParams(cursor=cursor) if cursor else None
                        listing = await session.list_tools(params=page)
                        names += [tool.name for tool in listing.tools]
                        cursor = (getattr(listing, "next_cursor", None)
                                  or getattr(listing, "nextCursor", None))
                        if not cursor:
                            break
                    out["tools"] = sorted(names)
                    for call in spec["calls"]:
                        stage = "tools/call " + call["tool"]
                        result = await session.call_tool(call["tool"], call["arguments"])
                        record = call_record(call["tool"], call["arguments"], result)
                        out["setup_calls"].append(record)
                    out["example_call"] = out["setup_calls"].pop()
                    stage = "shutdown"
    except BaseException as exc:
        leaf = exc
        while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
            leaf = leaf.exceptions[0]
        message = str(leaf) or repr(leaf)
        if isinstance(leaf, TimeoutError):
            message = f"no answer within {spec['timeout']} s"
        problem = {"stage": stage, "type": type(leaf).__name__, "message": message}
        out["shutdown_error" if stage == "shutdown" else "error"] = problem
        if not isinstance(exc, Exception):
            raise


def main():
    spec = json.load(sys.stdin)
    out = {"mcp_version": version("mcp"), "fastmcp_version": version("fastmcp"),
           "installed_version": version(spec["package"]), "server_info": None,
           "protocol_version": None, "tools": None, "setup_calls": [], "example_call": None}
    try:
        anyio.run(run, spec, out)
    finally:
        print(json.dumps(out))


main()
'''


# --- fixtures -----------------------------------------------------------------------------

FIXED_GIT_ENV = {
    "GIT_AUTHOR_NAME": "mcprun fixture", "GIT_AUTHOR_EMAIL": "fixture@example.invalid",
    "GIT_COMMITTER_NAME": "mcprun fixture", "GIT_COMMITTER_EMAIL": "fixture@example.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
}

INDEX_HTML = """<!DOCTYPE html>
<html><head><title>mcprun fixture</title></head>
<body><h1>Native fetch fixture</h1><p>Hello from a local page.</p></body></html>
"""

SAMPLE_HTML = """<!DOCTYPE html>
<html><head><title>Sample</title></head>
<body><h1>Sample document</h1><p>Converted by <b>markitdown</b>.</p>
<ul><li>one</li><li>two</li></ul></body></html>
"""


def make_git_repo(repo: Path) -> None:
    repo.mkdir(parents=True)

    def git(*args: str, date: str | None = None) -> None:
        env = dict(os.environ, **FIXED_GIT_ENV)
        if date:
            env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = date
        subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=repo, env=env,
                       check=True, stdout=subprocess.DEVNULL)

    git("init", "-q")
    (repo / "README.md").write_text("# fixture\n")
    git("add", "README.md")
    git("commit", "-q", "-m", "First commit", date="2026-01-01T12:00:00+00:00")
    (repo / "README.md").write_text("# fixture\n\nSecond line.\n")
    git("commit", "-q", "-a", "-m", "Second commit", date="2026-01-02T12:00:00+00:00")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_http_server(directory: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
         "--directory", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("python3 -m http.server did not start")


def build_fixtures(base: Path) -> dict[str, Path]:
    if base.exists():
        shutil.rmtree(base)
    names = ("git", "web", "duckdb", "excel", "word", "markitdown", "cli")
    dirs = {name: base / name for name in names}
    for path in dirs.values():
        path.mkdir(parents=True)
    make_git_repo(dirs["git"] / "repo")
    (dirs["web"] / "index.html").write_text(INDEX_HTML)
    (dirs["markitdown"] / "sample.html").write_text(SAMPLE_HTML)
    (dirs["cli"] / "hello.txt").write_text("hello\n")
    return dirs


# --- servers ------------------------------------------------------------------------------

def servers(fx: dict[str, Path], port: int) -> list[dict]:
    """One entry per package: how to start it and which calls to make (the last is the example)."""
    repo = str(fx["git"] / "repo")
    workbook = "native.xlsx"  # relative paths resolve against the first --allow-dir
    document = str(fx["word"] / "native.docx")
    return [
        {"package": "mcp-server-git", "version": "2026.10.19", "script": "mcp-server-git",
         "args": ["--repository", repo], "env": {},
         "calls": [("git_log", {"repo_path": repo, "max_count": 2})]},
        {"package": "mcp-server-fetch", "version": "2026.10.24", "script": "mcp-server-fetch",
         # Loopback addresses are refused without --allow-private-ips.
         "args": ["--allow-private-ips"], "env": {},
         "calls": [("fetch", {"url": f"http://127.0.0.1:{port}/"})]},
        {"package": "mcp-server-time", "version": "2026.10.19", "script": "mcp-server-time",
         "args": ["--local-timezone", "UTC"], "env": {},
         "calls": [("get_current_time", {"timezone": "UTC"})]},
        {"package": "mcp-server-duckdb", "version": "1.1.0", "script": "mcp-server-duckdb",
         "args": ["--db-path", str(fx["duckdb"] / "native.duckdb")], "env": {},
         "calls": [("query", {"query": "SELECT 42 AS answer"})]},
        {"package": "excel-mcp-server", "version": "2.2.2", "script": "excel-mcp-server",
         # The transport is a required subcommand; --allow-dir confines file access.
         "args": ["stdio", "--allow-dir", str(fx["excel"])], "env": {},
         "calls": [("create_workbook", {"path": workbook}),
                   ("write_range", {"path": workbook, "sheet": "Sheet1", "at": "A1",
                                    "rows": [["name", "qty"], ["apple", 3], ["pear", 5]]}),
                   ("read_range", {"path": workbook, "sheet": "Sheet1", "range": "A1:B3"})]},
        {"package": "office-word-mcp-server", "version": "1.1.11", "script": "word_mcp_server",
         "args": [], "env": {}, "cwd": str(fx["word"]),
         "calls": [("create_document", {"filename": document, "title": "Native run"}),
                   ("add_paragraph", {"filename": document, "text": "Hello from the native run."}),
                   ("get_document_text", {"filename": document})]},
        {"package": "markitdown-mcp", "version": "0.0.1a8", "script": "markitdown-mcp",
         "args": [], "env": {},
         "calls": [("convert_to_markdown", {"uri": (fx["markitdown"] / "sample.html").as_uri()})]},
        {"package": "cli-mcp-server", "version": "0.2.5", "script": "cli-mcp-server",
         # ALLOWED_DIR is required; ALLOWED_COMMANDS defaults to "ls,cat,pwd".
         "args": [], "env": {"ALLOWED_DIR": str(fx["cli"])},
         "calls": [("run_command", {"command": "cat hello.txt"})]},
    ]


# --- running ------------------------------------------------------------------------------

def processes_with_marker(token: str) -> list[int]:
    """Pids of live processes whose environment carries our per-run marker."""
    needle = f"{MARKER}={token}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def kill_marked(token: str) -> list[int]:
    pids = processes_with_marker(token)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def stdout_noise(command: list[str], env: dict, cwd: str | None, timeout: float) -> list[dict]:
    """Lines other than JSON-RPC that the server writes to stdout, tagged with when they came.

    The SDK client only logs such lines (and stops reading once it shuts down), so this
    starts the server once more, with the environment the SDK gives it, and speaks
    JSON-RPC to it directly: initialize, notifications/initialized and tools/list, then
    stdin is closed and stdout read to its end.
    """
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    noise, phase, deadline = [], "before initialize response", time.monotonic() + timeout

    def send(message: dict) -> None:
        proc.stdin.write((json.dumps(message) + "\n").encode())
        proc.stdin.flush()

    def read_until(request_id: int | None) -> bool:
        """Collect noise until the response to request_id (None: until end of stdout)."""
        while True:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                return False
            text = line.decode(errors="replace").rstrip("\r\n")
            try:
                message = json.loads(text)
            except ValueError:
                message = None
            if not (isinstance(message, dict) and message.get("jsonrpc") == "2.0"):
                noise.append({"text": text, "seen": phase})
            elif request_id is not None and message.get("id") == request_id:
                return True

    try:
        send({"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "record_native", "version": "1"}}})
        if read_until(1):
            phase = "during session"
            send({"jsonrpc": "2.0", "method": "notifications/initialized"})
            send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
            read_until(2)
        phase = "after stdin closed"
        proc.stdin.close()
        deadline = min(deadline, time.monotonic() + 10)
        read_until(None)
    except (queue.Empty, OSError):
        pass
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return noise


def record(server: dict, root: Path, timeout: float) -> dict:
    venv = root / server["package"]
    entry = {"version": server["version"], "script": server["script"], "args": server["args"],
             "env": server["env"]}
    if "cwd" in server:
        entry["cwd"] = server["cwd"]
    python, script = venv / "bin" / "python", venv / "bin" / server["script"]
    if not script.exists():
        entry["error"] = {"stage": "setup", "message": f"{script} not found"}
        return entry
    token = uuid.uuid4().hex
    spec = {"package": server["package"], "command": str(script), "args": server["args"],
            "env": {**server["env"], MARKER: token}, "cwd": server.get("cwd"),
            "timeout": timeout,
            "calls": [{"tool": tool, "arguments": args} for tool, args in server["calls"]]}
    client = subprocess.Popen([str(python), "-c", CLIENT], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        stdout, stderr = client.communicate(json.dumps(spec), timeout=timeout + 15)
    except subprocess.TimeoutExpired:
        # The server writes to the client's stderr pipe too, so it must die before we read.
        os.killpg(client.pid, signal.SIGKILL)
        kill_marked(token)
        stdout, stderr = "", client.communicate()[1]
    leftovers = kill_marked(token)
    try:
        result = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        message = f"client exited with {client.returncode} and no result"
        result = {"error": {"stage": "client", "message": message}}
    entry.update(result)
    if "error" in entry:
        entry["error"]["stderr_tail"] = stderr.splitlines()[-15:]
    env = {key: os.environ[key] for key in SDK_INHERITED_ENV if key in os.environ}
    env.update(spec["env"])
    command = [str(script), *server["args"]]
    entry["stdout_noise"] = stdout_noise(command, env, server.get("cwd"), timeout)
    leftovers += kill_marked(token)
    if leftovers:
        entry["killed_leftover_pids"] = leftovers
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help="folder holding one venv per package (default: /tmp/native)")
    parser.add_argument("--out", type=Path, help="JSON output (default: <root>/native_tools.json)")
    parser.add_argument("--only", help="comma-separated packages to record (default: all)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds allowed per server")
    args = parser.parse_args()
    out = args.out or args.root / "native_tools.json"

    fixtures = build_fixtures(args.root / "fixtures")
    http, port = start_http_server(fixtures["web"])
    try:
        wanted = set(args.only.split(",")) if args.only else None
        results = {}
        for server in servers(fixtures, port):
            if wanted is None or server["package"] in wanted:
                print(f"recording {server['package']} ...", file=sys.stderr, flush=True)
                results[server["package"]] = record(server, args.root, args.timeout)
    finally:
        os.killpg(http.pid, signal.SIGKILL)
        http.wait()

    text = json.dumps(results, indent=2, ensure_ascii=False) + "\n"
    out.write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
