"""Prometheus metrics (--metrics, --metrics-path, --metrics-listen): what a scrape says matches what was sent.

Each test sends a known mix (calls that succeed, tool errors, protocol errors, calls the policy denies,
requests without credentials), then scrapes and parses the text with prometheus-client's own parser.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import threading

import httpx
import pytest
from helpers import (SERVERS, child_env, error_line, free_port, run_cli, serving, started, stdio_transport,
                     usage_error, wait_for)
from prometheus_client.parser import text_string_to_metric_families

ALICE = "alice-0123456789abcdef"
STREAM_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
LISTENING = re.compile(r"^mcprun: metrics on (http://\S+)$", re.M)


def scrape(url: str, **headers: str) -> dict:
    """{(sample name, ((label, value), ...)): value} of one scrape."""
    response = httpx.get(url, headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def call(url: str, name: str, arguments: dict, request_id: int = 1, **headers: str) -> dict:
    """One stateless tools/call, on a connection of its own (so that workers share them)."""
    body = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    response = httpx.post(url, json=body, headers={**STREAM_HEADERS, **headers}, timeout=30)
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("application/json"):
        return response.json()
    return json.loads(response.text.partition("data: ")[2])


async def mixed_load(target) -> None:
    """5 calls that succeed, 3 tool errors, 2 calls the policy denies, 1 of an unknown tool (fastmcp answers a
    tool error), 2 failed resource reads."""
    from fastmcp import Client

    async with Client(target) as client:
        assert (await client.call_tool("nope", {}, raise_on_error=False)).is_error
        for n in range(5):
            await client.call_tool("echo", {"text": f"x{n}"})
        for _ in range(3):
            assert (await client.call_tool("fail", {"message": "no"}, raise_on_error=False)).is_error
        for _ in range(2):
            assert (await client.call_tool("held", {}, raise_on_error=False)).is_error
        for _ in range(2):
            with pytest.raises(Exception):
                await client.read_resource("demo://nothing-here")


def test_a_scrape_counts_each_call_by_outcome_behind_the_token(token, tmp_path):
    (tmp_path / "tokens").write_text(f"alice {ALICE}\n")
    with serving(token, "production_server.py", "--auth-token-file", str(tmp_path / "tokens"), "--exclude-tools",
                 "held", "--metrics", cwd=SERVERS) as server:
        from fastmcp.client.transports import StreamableHttpTransport

        asyncio.run(asyncio.wait_for(mixed_load(StreamableHttpTransport(server.url, auth=ALICE)), 90))
        for _ in range(3):
            assert httpx.post(server.url, json={}, timeout=10).status_code == 401
        assert httpx.post(server.url, json={}, headers={"authorization": "Bearer wrong"}, timeout=10).status_code == 401
        metrics_url = server.url.replace("/mcp", "/metrics")
        refused = httpx.get(metrics_url, timeout=10)
        assert refused.status_code == 401 and "mcprun_" not in refused.text
        samples = scrape(metrics_url, authorization=f"Bearer {ALICE}")

    assert value(samples, "mcprun_tool_calls_total", tool="echo", outcome="ok") == 5
    assert value(samples, "mcprun_tool_calls_total", tool="fail", outcome="tool_error") == 3
    assert value(samples, "mcprun_tool_calls_total", tool="held", outcome="denied") == 2
    assert value(samples, "mcprun_tool_calls_total", tool="nope", outcome="tool_error") == 1
    assert value(samples, "mcprun_mcp_requests_total", method="tools/call", outcome="ok") == 5
    assert value(samples, "mcprun_mcp_requests_total", method="resources/read", outcome="error") == 2
    assert value(samples, "mcprun_mcp_request_duration_seconds_count", method="tools/call") == 11
    assert value(samples, "mcprun_tool_call_duration_seconds_count", tool="echo") == 5
    assert value(samples, "mcprun_tool_call_duration_seconds_bucket", tool="echo", le="+Inf") == 5
    assert value(samples, "mcprun_auth_failures_total", status="401", error="none") == 4  # with the scrape
    assert value(samples, "mcprun_auth_failures_total", status="401", error="invalid_token") == 1
    assert value(samples, "mcprun_http_requests_total", method="POST", route="mcp", status="401") == 4
    assert value(samples, "mcprun_http_requests_total", method="GET", route="metrics", status="401") == 1
    answered = sum(v for (name, labels), v in samples.items() if name == "mcprun_http_requests_total"
                   and ("method", "POST") in labels and ("status", "401") not in labels)
    assert answered == sum(v for (name, _), v in samples.items() if name == "mcprun_mcp_requests_total")
    assert value(samples, "mcprun_mcp_requests_in_flight") == 0
    assert value(samples, "process_resident_memory_bytes") > 0
    assert value(samples, "mcprun_rate_limited_total", limit="rate_limit") == 0


def test_open_sessions_and_rate_limits_are_gauged_and_counted(token):
    with serving(token, "production_server.py", "--metrics-path", "/internal/metrics", "--rate-limit", "3/m",
                 cwd=SERVERS) as server:
        metrics_url = server.url.replace("/mcp", "/internal/metrics")
        version = {"mcp-protocol-version": "2025-06-18"}
        opened = httpx.post(server.url, headers={**STREAM_HEADERS, **version}, timeout=10,
                            json={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                                "protocolVersion": "2025-06-18", "capabilities": {},
                                "clientInfo": {"name": "test", "version": "1"}}})
        session = {"mcp-session-id": opened.headers["mcp-session-id"], **version}
        samples = scrape(metrics_url)  # the scrapes are not rate-limited: only the MCP endpoint is
        assert value(samples, "mcprun_sessions_open") == 1
        assert value(samples, "mcprun_mcp_requests_total", method="initialize", outcome="ok") == 1
        assert httpx.delete(server.url, headers=session, timeout=10).status_code in (200, 204)
        assert value(scrape(metrics_url), "mcprun_sessions_open") == 0
        statuses = [httpx.post(server.url, json={}, headers=STREAM_HEADERS, timeout=10).status_code for _ in range(4)]
        assert statuses.count(429) == 3  # a burst of 3: the initialize, the DELETE, one more
        samples = scrape(metrics_url)
        assert httpx.get(server.url.replace("/mcp", "/metrics"), timeout=10).status_code != 200  # it moved
    assert value(samples, "mcprun_rate_limited_total", limit="rate_limit") == 3
    assert value(samples, "mcprun_http_requests_total", method="POST", route="mcp", status="429") == 3
    assert value(samples, "mcprun_http_requests_total", method="DELETE", route="mcp", status="200") + value(
        samples, "mcprun_http_requests_total", method="DELETE", route="mcp", status="204") == 1


def worker_pids(samples: dict) -> set:
    return {dict(labels)["pid"] for name, labels in samples if name == "process_resident_memory_bytes"}


def test_workers_add_up_on_a_listener_of_their_own_and_survive_a_reload(token):
    with serving(token, "production_server.py", "--stateless", "--workers", "2", "--metrics-listen",
                 "127.0.0.1:0", "--exclude-tools", "held", cwd=SERVERS) as server:
        listener = LISTENING.search(server.stderr)[1]
        assert httpx.get(server.url.replace("/mcp", "/metrics"), timeout=10).status_code != 200  # not on the MCP port

        def load(n: int) -> None:
            for i in range(10):
                assert call(server.url, "echo", {"text": f"{n}-{i}"})["result"]["isError"] is False

        threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        asyncio.run(asyncio.wait_for(mixed_load(server.url), 90))
        samples = scrape(listener)
        assert value(samples, "mcprun_tool_calls_total", tool="echo", outcome="ok") == 45
        assert value(samples, "mcprun_tool_calls_total", tool="fail", outcome="tool_error") == 3
        assert value(samples, "mcprun_tool_calls_total", tool="held", outcome="denied") == 2
        assert value(samples, "mcprun_mcp_requests_total", method="resources/read", outcome="error") == 2
        assert value(samples, "mcprun_mcp_request_duration_seconds_count", method="tools/call") == 51
        first = worker_pids(samples)
        assert len(first) == 2

        server.process.send_signal(signal.SIGHUP)  # each worker replaced: drains and exits
        wait_for(lambda: "reload: 2 workers replaced" in server.stderr, what="the reload")
        wait_for(lambda: len(worker_pids(scrape(listener))) == 2 and not worker_pids(scrape(listener)) & first,
                 what="the new workers' process metrics, and none of the old ones'")
        call(server.url, "echo", {"text": "after"})
        samples = scrape(listener)
    assert value(samples, "mcprun_tool_calls_total", tool="echo", outcome="ok") == 46  # the old workers' count on
    assert value(samples, "mcprun_drains_total") == 2
    assert value(samples, "mcprun_draining") == 0


def test_stdio_is_counted_on_the_listener(token):
    port = free_port()

    async def session() -> dict:
        from fastmcp import Client

        async with Client(stdio_transport(token, "production_server.py", "--metrics-listen", f"127.0.0.1:{port}",
                                          cwd=SERVERS)) as client:
            for _ in range(3):
                await client.call_tool("echo", {"text": "stdio"})
            await client.call_tool("fail", {"message": "no"}, raise_on_error=False)
            return await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/metrics")

    samples = asyncio.run(asyncio.wait_for(session(), 90))
    assert value(samples, "mcprun_tool_calls_total", tool="echo", outcome="ok") == 3
    assert value(samples, "mcprun_tool_calls_total", tool="fail", outcome="tool_error") == 1
    assert not any(name.startswith("mcprun_http_") for name, _ in samples)  # no HTTP served


@pytest.mark.parametrize(("args", "line"), [
    (["--metrics"], "mcprun: error: --metrics serves the metrics on the http port; over stdio give "
                    "--metrics-listen HOST:PORT"),
    (["--metrics-path", "/mcp", "-t", "http"], "mcprun: error: --metrics-path: /mcp is already the MCP endpoint's "
                                               "route; give another with --metrics-path"),
    (["--metrics", "--health-path", "/metrics", "-t", "sse"],
     "mcprun: error: --metrics: /metrics is already the health route's route; give another with --metrics-path"),
])
def test_metrics_where_they_cannot_be_served_is_one_line(token, args, line):
    assert error_line(run_cli(token, "fastmcp_server.py", *args, cwd=SERVERS), 2) == line


def test_a_bad_or_taken_listener_address_is_one_line(token):
    result = run_cli(token, "fastmcp_server.py", "--metrics-listen", "9100", cwd=SERVERS)
    usage_error(result, "argument --metrics-listen: '9100' is not HOST:PORT (e.g. 127.0.0.1:9100)")
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen()
    port = held.getsockname()[1]
    with held:
        result = run_cli(token, "fastmcp_server.py", "--metrics-listen", f"127.0.0.1:{port}", cwd=SERVERS)
    assert error_line(result, 1) == f"mcprun: error: --metrics-listen 127.0.0.1:{port}: Address already in use"


def test_environment_variables_turn_them_on(token):
    port = free_port()
    env_extra = {"MCPRUN_METRICS": "1", "MCPRUN_METRICS_LISTEN": f"127.0.0.1:{port}"}
    with started(token, "production_server.py", "-t", "http", "--port", "0", "--stateless", cwd=SERVERS,
                 env=child_env(token, **env_extra)) as server:
        call(server.url, "echo", {"text": "env"})
        on_port = scrape(server.url.replace("/mcp", "/metrics"))
        on_listener = scrape(f"http://127.0.0.1:{port}/metrics")
    for samples in (on_port, on_listener):
        assert value(samples, "mcprun_tool_calls_total", tool="echo", outcome="ok") == 1


@pytest.mark.parametrize("on", [False, True])
def test_prometheus_client_is_imported_only_when_metrics_are_on(token, on):
    async def imported() -> list:
        from fastmcp import Client

        args = ["--metrics-listen", f"127.0.0.1:{free_port()}"] if on else []
        async with Client(stdio_transport(token, "imported.py", *args, cwd=SERVERS)) as client:
            return (await client.call_tool("imported", {"names": ["prometheus_client"]})).data

    assert asyncio.run(asyncio.wait_for(imported(), 90)) == (["prometheus_client"] if on else [])


def test_sse_streams_and_sessions_are_gauged(token):
    from fastmcp import Client
    from fastmcp.client.transports import SSETransport

    with serving(token, "production_server.py", "--metrics", transport="sse", cwd=SERVERS) as server:
        metrics_url = server.url.replace("/sse", "/metrics")

        async def session() -> dict:
            async with Client(SSETransport(server.url)) as client:
                await client.call_tool("echo", {"text": "sse"})
                return await asyncio.to_thread(scrape, metrics_url)

        during = asyncio.run(asyncio.wait_for(session(), 90))
        wait_for(lambda: value(scrape(metrics_url), "mcprun_event_streams_open") == 0, what="the stream closed")
        after = scrape(metrics_url)
    assert value(during, "mcprun_event_streams_open") == 1
    assert value(during, "mcprun_sessions_open") == 1
    assert value(during, "mcprun_tool_calls_total", tool="echo", outcome="ok") == 1
    assert value(during, "mcprun_http_requests_total", method="POST", route="mcp", status="202") >= 2
    assert value(after, "mcprun_sessions_open") == 0
