"""A program that answers JSON-RPC on stdin/stdout by hand: no MCP server object for mcprun to catch."""

import json
import sys

for line in sys.stdin:
    request = json.loads(line)
    print(json.dumps({"jsonrpc": "2.0", "id": request.get("id"), "result": {}}), flush=True)
