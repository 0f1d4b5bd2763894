"""Clients speaking each earlier protocol revision, by hand-written JSON-RPC, on every transport: the server
answers in the revision the client asked for and serves tools, resources and prompts in it."""

from __future__ import annotations

import json

import httpx
import pytest
from helpers import INITIALIZED, SERVERS, mcprun_command, serving, stdio_exchange, tools_call

REVISIONS = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"]
SPECS = ["fastmcp_server.py", "compat/mcp1_full.py", "compat/lowlevel_object.py"]
CALLS = {"fastmcp_server.py": ("echo", {"text": "hi"}, "hi"),
         "compat/mcp1_full.py": ("echo", {"text": "hi"}, "hi"),
         "compat/lowlevel_object.py": ("add", {"a": 1, "b": 2}, "3")}


def initialize(revision: str) -> dict:
    return {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": revision, "capabilities": {},
                       "clientInfo": {"name": "old-client", "version": "0"}}}


def messages_for(spec: str, revision: str) -> list[dict]:
    tool, arguments, _ = CALLS[spec]
    return [initialize(revision), INITIALIZED, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            tools_call(3, tool, arguments)]


def check(spec: str, revision: str, replies: dict) -> None:
    assert replies[1]["result"]["protocolVersion"] == revision
    assert CALLS[spec][0] in [tool["name"] for tool in replies[2]["result"]["tools"]]
    assert replies[3]["result"]["content"][0]["text"] == CALLS[spec][2]


def events(lines) -> dict:
    """JSON-RPC responses from SSE 'data:' lines, by id."""
    found = {}
    for line in lines:
        if line.startswith("data: {"):
            message = json.loads(line[6:])
            if "id" in message:
                found[message["id"]] = message
    return found


@pytest.mark.parametrize("revision", REVISIONS)
@pytest.mark.parametrize("spec", SPECS)
def test_stdio(token, spec, revision):
    result = stdio_exchange([*mcprun_command(), spec], messages_for(spec, revision), token, cwd=SERVERS)
    assert result.returncode == 0, result.stderr
    check(spec, revision, {m["id"]: m for m in map(json.loads, result.stdout.splitlines()) if "id" in m})


@pytest.mark.parametrize("spec", SPECS)
def test_streamable_http(token, spec):
    with serving(token, spec, cwd=SERVERS) as server:
        for revision in REVISIONS:
            headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
            replies = {}
            with httpx.Client(timeout=30) as client:
                for message in messages_for(spec, revision):
                    response = client.post(server.url, json=message, headers=headers)
                    assert response.status_code in (200, 202), response.text
                    if "mcp-session-id" in response.headers:
                        headers = {**headers, "mcp-session-id": response.headers["mcp-session-id"],
                                   "mcp-protocol-version": revision}
                    if "id" not in message:
                        continue
                    if response.headers.get("content-type", "").startswith("application/json"):
                        replies[message["id"]] = response.json()
                    else:
                        replies.update(events(response.text.splitlines()))
            check(spec, revision, replies)


@pytest.mark.parametrize("spec", SPECS)
def test_sse(token, spec):
    with serving(token, spec, transport="sse", cwd=SERVERS) as server:
        root = server.url.rsplit("/", 1)[0]
        for revision in REVISIONS:
            with httpx.stream("GET", server.url, headers={"accept": "text/event-stream"}, timeout=30) as stream:
                lines = stream.iter_lines()
                endpoint = root + next(line for line in lines if line.startswith("data: "))[6:]
                replies = {}
                for message in messages_for(spec, revision):
                    assert httpx.post(endpoint, json=message, timeout=30).status_code == 202
                    while "id" in message and message["id"] not in replies:
                        replies.update(events([next(lines)]))
            check(spec, revision, replies)
