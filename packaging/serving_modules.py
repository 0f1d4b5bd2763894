"""List the bundle's modules that starting and serving a server imports, for the zipapp to compile when it unpacks.

    python packaging/serving_modules.py SITE_PACKAGES > SITE_PACKAGES/mcprun_compile.txt

Compiling all ~3,000 modules of the bundle made the zipapp's first start take 10-20 s; a
server start imports about 700 of them. This serves examples/echo.py over stdio for one
exchange (initialize, tools/list, tools/call), builds its streamable-HTTP and SSE apps with
uvicorn's protocol modules, all with only SITE_PACKAGES and the stdlib on sys.path, and
prints the imported files under SITE_PACKAGES, relative and sorted. Modules not listed are
compiled by Python the first time something imports them.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXCHANGE = [
    {"jsonrpc": "2.0", "id": 1, "method": "initialize",
     "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "build", "version": "1"}}},
    {"jsonrpc": "2.0", "method": "notifications/initialized"},
    {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}},
]
CHILD = """
import atexit, os, sys
site = sys.argv[1]
sys.path[:0] = [site]
output = os.fdopen(int(sys.argv[2]), "w")

def report():
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None) or ""
        if path.startswith(site + os.sep) and path.endswith(".py"):
            output.write(os.path.relpath(path, site) + "\\n")
    output.close()

atexit.register(report)
import uvicorn.lifespan.on, uvicorn.loops.auto, uvicorn.protocols.http.auto, uvicorn.protocols.http.h11_impl
import uvicorn.protocols.websockets.auto
from fastmcp import FastMCP
FastMCP("apps").http_app(), FastMCP("apps").http_app(transport="sse")
import mcprun
sys.argv = ["mcprun", sys.argv[3]]
sys.exit(mcprun.main())
"""


def main() -> None:
    site = os.path.abspath(sys.argv[1])
    read, write = os.pipe()
    with tempfile.TemporaryFile() as err:
        child = subprocess.Popen([sys.executable, "-I", "-c", CHILD, site, str(write), str(ROOT / "examples" / "echo.py")],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                                 pass_fds=[write])
        os.close(write)
        child.stdin.write("".join(json.dumps(message) + "\n" for message in EXCHANGE))
        child.stdin.flush()
        replies = []
        for line in child.stdout:  # bounded: the child ends at end of input, or when the build's timeout kills it
            replies.append(json.loads(line))
            if len(replies) == 3:
                break
        child.stdin.close()  # end of input: mcprun stops and the child reports what it imported
        with os.fdopen(read) as listing:
            files = listing.read().split()
        child.wait(timeout=60)
        err.seek(0)
        if child.returncode != 0 or len(replies) != 3 or any("result" not in reply for reply in replies):
            sys.exit(f"serving_modules: serving examples/echo.py failed (exit {child.returncode}): {replies}\n"
                     + err.read().decode()[-2000:])
    print("\n".join(sorted(set(files))))


if __name__ == "__main__":
    main()
