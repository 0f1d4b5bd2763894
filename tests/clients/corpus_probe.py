"""Serve one server with mcprun and talk to it with two real clients, inside the caller's network namespace.

    python corpus_probe.py stdio|http|sse CALLS [--page DIR] -- MCPRUN_COMMAND...

tests/test_corpus.py runs this under 'unshare --net', so nothing here can reach beyond the machine:
it brings the namespace's loopback up, optionally serves DIR on it (for a fetch server; '{page}' in
CALLS becomes its URL), starts MCPRUN_COMMAND (with '-t TRANSPORT -p 0' for http/sse; over stdio each
client starts its own), and runs CALLS, a JSON list of [tool, arguments], through fastmcp's Client and
through the mcp 1.x SDK's ClientSession (tests/clients/mcp1_client.py in .venv-mcp1). '{client}' in
CALLS becomes the client's name. Prints one JSON object: per client the tool names and each call's
text and error flag; for http/sse mcprun's exit code after SIGTERM and its stderr.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import http.server
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
MCP1_PYTHON = HERE.parent.parent / ".venv-mcp1" / "bin" / "python"
TIMEOUT = 90.0  # seconds for a server to start, and for each client's whole session


def loopback_up() -> None:
    """Bring 'lo' up: a new network namespace has it down (SIOCGIFFLAGS / SIOCSIFFLAGS)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(sock, 0x8913, request))[1]
        fcntl.ioctl(sock, 0x8914, struct.pack("16sH14s", b"lo", flags | 0x1, b""))


def serve_page(folder: str) -> str:
    """Serve folder on loopback in a thread; return its URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=folder)
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/"


def for_client(calls: list, client: str) -> list:
    return json.loads(json.dumps(calls).replace("{client}", client))


async def fastmcp_session(target, calls: list) -> dict:
    from fastmcp import Client

    async with Client(target, timeout=TIMEOUT) as client:
        tools = sorted(tool.name for tool in await client.list_tools())
        results = []
        for tool, arguments in calls:
            result = await client.call_tool(tool, arguments, raise_on_error=False)
            results.append({"text": next((c.text for c in result.content if hasattr(c, "text")), None),
                            "error": result.is_error})
    return {"tools": tools, "results": results}


def mcp1_session(kind: str, target: list, calls: list) -> dict:
    result = subprocess.run([str(MCP1_PYTHON), str(HERE / "mcp1_client.py"), "session", kind, json.dumps(calls),
                             *target], capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        return {"failed": result.stderr[-3000:]}
    return json.loads(result.stdout)


def wait_ready(process: subprocess.Popen, lines: list) -> str | None:
    """Read mcprun's stderr until its ready line; keep reading in the background after it."""
    found = threading.Event()
    url: list = []

    def read() -> None:
        for line in process.stderr:
            lines.append(line)
            match = re.match(r"^mcprun: ready: .* at (?P<url>http://\S+)", line)
            if match and not url:
                url.append(match["url"])
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    found.wait(TIMEOUT)
    return url[0] if url else None


def main() -> int:
    kind, calls = sys.argv[1], json.loads(sys.argv[2])
    rest = sys.argv[3:]
    end = rest.index("--")
    options, command = rest[:end], rest[end + 1:]
    loopback_up()
    if "--page" in options:
        calls = json.loads(json.dumps(calls).replace("{page}", serve_page(options[options.index("--page") + 1])))
    report: dict = {}
    if kind == "stdio":
        from fastmcp.client.transports import StdioTransport

        transport = StdioTransport(command[0], command[1:], env=dict(os.environ), keep_alive=False)
        report["fastmcp"] = asyncio.run(fastmcp_session(transport, for_client(calls, "fastmcp")))
        report["mcp1"] = mcp1_session("stdio", command, for_client(calls, "mcp1"))
    else:
        dash = command.index("--") if "--" in command else len(command)
        served = [*command[:dash], "-t", kind, "-p", "0", *command[dash:]]
        process = subprocess.Popen(served, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        lines: list = []
        try:
            url = wait_ready(process, lines)
            if url:
                report["fastmcp"] = asyncio.run(fastmcp_session(url, for_client(calls, "fastmcp")))
                report["mcp1"] = mcp1_session(kind, [url], for_client(calls, "mcp1"))
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                report["exit"] = process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                report["exit"] = process.wait(10)
        report["stderr"] = "".join(lines)[-5000:]
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
