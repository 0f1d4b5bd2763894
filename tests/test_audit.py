"""The audit log (--audit-log): one JSON line per tool call, resource read and prompt get, on every transport.

Each test counts what it sent and finds it in the file exactly once, with the fields an operator reads:
who (caller, client), what (method, name, the arguments' SHA-256), how it ended and how long it took.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import signal
import threading

import httpx
import pytest
from helpers import SERVERS, error_line, run_cli, serving, stdio_transport, wait_for

ALICE = "alice-0123456789abcdef"
FIELDS = {"time", "method", "transport", "request_id", "session", "client", "caller", "outcome", "error",
          "duration_ms"}
STREAM_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def lines_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def sha256_of(arguments: dict) -> str:
    return hashlib.sha256(json.dumps(arguments, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


async def calls(target) -> None:
    """Four operations the audit log must hold: a call, a denied call, a failed read, a prompt."""
    from fastmcp import Client

    async with Client(target) as client:
        await client.call_tool("echo", {"text": "audited"})
        await client.call_tool("argv", {}, raise_on_error=False)  # left out by the policy
        with pytest.raises(Exception):
            await client.read_resource("demo://nothing-here")
        await client.get_prompt("summarize", {"topic": "logs"})


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_every_operation_is_one_line_with_who_what_and_how_it_ended(token, tmp_path, transport):
    log = tmp_path / "audit.jsonl"
    args = ["--audit-log", str(log), "--exclude-tools", "argv"]
    if transport == "stdio":
        asyncio.run(asyncio.wait_for(calls(stdio_transport(token, "fastmcp_server.py", *args, cwd=SERVERS)), 90))
    else:
        (tmp_path / "tokens").write_text(f"alice {ALICE}\n")
        with serving(token, "fastmcp_server.py", *args, "--auth-token-file", str(tmp_path / "tokens"),
                     cwd=SERVERS) as server:
            from fastmcp.client.transports import StreamableHttpTransport

            asyncio.run(asyncio.wait_for(calls(StreamableHttpTransport(server.url, auth=ALICE)), 90))
        assert ALICE not in log.read_text()
    records = lines_of(log)
    assert [(r["method"], r.get("name"), r["outcome"]) for r in records] == [
        ("tools/call", "echo", "ok"), ("tools/call", "argv", "denied"),
        ("resources/read", "demo://nothing-here", "error"), ("prompts/get", "summarize", "ok")], records
    for record in records:
        assert FIELDS <= set(record) and record["transport"] == transport, record
        assert record["duration_ms"] >= 0 and record["time"].endswith("Z")
        assert "arguments" not in record  # only with --audit-arguments
        assert record["caller"] == (None if transport == "stdio" else "alice")
        assert (record["client"] is None) == (transport == "stdio")
    assert records[0]["arguments_sha256"] == sha256_of({"text": "audited"})
    assert records[1]["error"] == "Unknown tool: 'argv'"
    assert "nothing-here" in records[2]["error"]
    assert log.stat().st_mode & 0o777 == 0o600


def test_arguments_and_lists_when_asked(token, tmp_path):
    log = tmp_path / "audit.jsonl"
    asyncio.run(asyncio.wait_for(calls(stdio_transport(token, "fastmcp_server.py", "--audit-log", str(log),
                                                       "--audit-arguments", "--audit-lists", cwd=SERVERS)), 90))
    records = lines_of(log)
    call = next(r for r in records if r.get("name") == "echo")
    assert call["arguments"] == {"text": "audited"} and call["arguments_sha256"] == sha256_of({"text": "audited"})
    assert any(r["method"] == "tools/list" for r in records), records


def test_two_workers_write_whole_lines_and_sighup_after_a_rename_loses_none(token, tmp_path):
    log, rotated = tmp_path / "audit.jsonl", tmp_path / "audit.jsonl.1"
    shutil.copy(SERVERS / "pid_server.py", tmp_path)
    per_thread, threads, sent = 250, 4, []
    with serving(token, "pid_server.py", "--stateless", "--workers", "2", "--no-access-log", "--audit-log",
                 str(log), cwd=tmp_path) as server:
        def call(number: int, http: httpx.Client) -> None:
            body = {"jsonrpc": "2.0", "id": number, "method": "tools/call", "params": {"name": "pid", "arguments": {}}}
            answer = http.post(server.url, json=body, headers={**STREAM_HEADERS, "mcp-protocol-version": "2025-06-18"})
            assert answer.status_code == 200, answer.text
            sent.append(number)

        def load(first: int) -> None:
            with httpx.Client(timeout=30) as http:
                for number in range(first, first + per_thread):
                    call(number, http)

        workers = [threading.Thread(target=load, args=(index * per_thread,)) for index in range(threads)]
        for worker in workers:
            worker.start()
        wait_for(lambda: len(sent) > per_thread, what="a quarter of the calls")
        log.rename(rotated)  # as logrotate does, then SIGHUP: new workers open a new file
        server.process.send_signal(signal.SIGHUP)
        for worker in workers:
            worker.join(120)
        wait_for(lambda: any("workers replaced" in line for line in server.lines), what="the workers' replacement")
        with httpx.Client(timeout=30) as http:
            call(threads * per_thread, http)  # after the replacement: the new file
    records = lines_of(rotated) + lines_of(log)  # every line whole JSON, or this fails
    assert sorted(r["request_id"] for r in records) == sorted(sent) == list(range(threads * per_thread + 1))
    assert {r["outcome"] for r in records} == {"ok"}
    assert lines_of(log), "the new file got the calls after SIGHUP"


def test_an_audit_log_that_cannot_be_written_is_one_line(token, tmp_path):
    result = run_cli(token, "fastmcp_server.py", "--audit-log", str(tmp_path / "no" / "audit.jsonl"), cwd=SERVERS,
                     input="")
    assert error_line(result, 2) == f"mcprun: error: --audit-log {tmp_path}/no/audit.jsonl: no folder {tmp_path}/no"
    result = run_cli(token, "fastmcp_server.py", "--audit-log", str(tmp_path), cwd=SERVERS, input="")
    assert error_line(result, 2) == f"mcprun: error: --audit-log {tmp_path}: is a folder; name a file in it"
