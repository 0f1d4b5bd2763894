"""OpenTelemetry traces (--otlp-endpoint): the spans reach a real OTLP/HTTP receiver, and nothing does without one.

The receiver is an http.server on loopback that takes POST /v1/traces and decodes each body with
OpenTelemetry's own protobuf definitions (opentelemetry-proto). mcprun does not carry the SDK: the
module's fixture makes its --pythonpath folder with 'mcprun vendor', the command docs/observing.md gives.
"""

from __future__ import annotations

import asyncio
import gzip
import http.server
import os
import re
import shutil
import threading
from pathlib import Path

import pytest
from helpers import (
    INITIALIZE, INITIALIZED, ROOT, SERVERS, child_env, error_line, mcprun_command, run_cli, serving,
    stdio_exchange, tools_call, usage_error,
)

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"  # the client's trace and span, as its traceparent names them
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SPAN_KIND_SERVER
needs_strace = pytest.mark.skipif(not shutil.which("strace"), reason="strace not installed")


def otel_version() -> str:
    """The opentelemetry-api mcprun carries: the SDK vendored beside it must be the same release."""
    lock = (ROOT / "packaging" / "requirements.lock").read_text()
    return re.search(r"^opentelemetry-api==(\S+)", lock, re.M)[1]


@pytest.fixture(scope="module")
def otel(tmp_path_factory) -> Path:
    """The --pythonpath folder of the OpenTelemetry SDK and its OTLP/HTTP exporter (the index is reached here)."""
    import uuid

    token, folder = uuid.uuid4().hex, tmp_path_factory.mktemp("otel") / "otel"
    from test_vendor import vendor_env

    version = otel_version()
    result = run_cli(token, "vendor", f"opentelemetry-sdk=={version}",
                     f"opentelemetry-exporter-otlp-proto-http=={version}", "-o", str(folder),
                     env=vendor_env(token), timeout=300)
    if result.returncode != 0 and "pip install failed" in result.stderr and "connection" in result.stderr.lower():
        pytest.skip(f"the package index is out of reach: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert (folder / "opentelemetry" / "sdk").is_dir() and not (folder / "opentelemetry" / "trace").exists()
    return folder


def _value(any_value):
    return getattr(any_value, any_value.WhichOneof("value")) if any_value.WhichOneof("value") else None


class Collector:
    """An OTLP/HTTP receiver on 127.0.0.1: every POST /v1/traces decoded, with its path and headers."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest, ExportTraceServiceResponse,
        )

        self.posts: list[tuple[str, dict, object]] = []
        posts = self.posts

        class Receiver(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                posts.append((self.path, {k.lower(): v for k, v in self.headers.items()},
                              ExportTraceServiceRequest.FromString(body)))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def spans(self) -> list[dict]:
        """Every span received, flattened: ids in hex, its attributes, its resource's and its scope's name."""
        found = []
        for _, _, request in self.posts:
            for resource_spans in request.resource_spans:
                resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        found.append({"name": span.name, "kind": span.kind, "trace": span.trace_id.hex(),
                                      "id": span.span_id.hex(), "parent": span.parent_span_id.hex(),
                                      "scope": scope_spans.scope.name, "resource": resource,
                                      "attributes": {kv.key: _value(kv.value) for kv in span.attributes}})
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector():
    receiver = Collector()
    yield receiver
    receiver.close()


def traced_env(token: str, **extra: str) -> dict:
    env = child_env(token, **{"OTEL_SERVICE_NAME": "traced-demo", "OTEL_EXPORTER_OTLP_HEADERS": "x-collector-key=k123",
                              "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test", **extra})
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "MCPRUN_OTLP_ENDPOINT"):
        env.pop(name, None)
    return env


async def call_with_traceparent(url: str) -> str:
    from fastmcp import Client
    from fastmcp.client.transports import StreamableHttpTransport

    async with Client(StreamableHttpTransport(url, headers={"traceparent": TRACEPARENT})) as client:
        return (await client.call_tool("echo", {"text": "traced"})).content[0].text


# the server's own spans: fastmcp's, or the official SDK's (MCPServer, low-level servers); workers export their own
@pytest.mark.parametrize("spec, scope, more", [("fastmcp_server.py", "fastmcp", ()),
                                               ("sdk_server.py", "mcp-python-sdk", ()),
                                               ("fastmcp_server.py", "fastmcp", ("--stateless", "--workers", "2"))],
                         ids=["fastmcp", "sdk", "workers"])
def test_http_call_continues_the_clients_trace_through_the_gateway_span(token, otel, collector, spec, scope, more):
    with serving(token, spec, *more, "--otlp-endpoint", collector.url, "--pythonpath", str(otel),
                 cwd=SERVERS, env=traced_env(token)) as server:
        assert asyncio.run(asyncio.wait_for(call_with_traceparent(server.url), 60)) == "traced"
        assert server.stop() == 0  # SIGTERM: the batch still held is sent before the process exits
    assert f"mcprun: traces: exporting spans over OTLP/HTTP to {collector.url}/v1/traces as service " \
           "'traced-demo'" in server.stderr
    assert {path for path, _, _ in collector.posts} == {"/v1/traces"}
    assert all(headers.get("x-collector-key") == "k123" for _, headers, _ in collector.posts)
    spans = collector.spans()
    gateway = [span for span in spans if span["scope"] == "mcprun"
               and span["attributes"].get("mcp.method.name") == "tools/call"]
    assert len(gateway) == 1, spans
    gateway = gateway[0]
    assert (gateway["trace"], gateway["parent"], gateway["kind"], gateway["name"]) == (
        CLIENT_TRACE, CLIENT_SPAN, SERVER_KIND, "POST /mcp")
    assert {key: gateway["attributes"].get(key) for key in (
        "http.request.method", "http.route", "http.response.status_code", "gen_ai.tool.name")} == {
        "http.request.method": "POST", "http.route": "/mcp", "http.response.status_code": 200,
        "gen_ai.tool.name": "echo"}
    assert gateway["resource"]["service.name"] == "traced-demo"
    assert gateway["resource"]["deployment.environment"] == "test"
    called = [span for span in spans if span["scope"] == scope and span["parent"] == gateway["id"]]
    assert [(span["attributes"].get("mcp.method.name"), span["attributes"].get("gen_ai.tool.name"), span["trace"],
             span["kind"]) for span in called] == [("tools/call", "echo", CLIENT_TRACE, SERVER_KIND)], spans
    # each request is one gateway span, the client's first ones (discovery, tools/list) too, all in its trace
    requests = [span for span in spans if span["scope"] == "mcprun"]
    assert len(requests) > 1 and {(span["trace"], span["parent"]) for span in requests} == {(CLIENT_TRACE,
                                                                                            CLIENT_SPAN)}


def test_caller_is_on_the_gateway_span(token, otel, collector, tmp_path):
    (tmp_path / "tokens").write_text("ci-bot token-0123456789abcdef\n")
    with serving(token, "fastmcp_server.py", "--otlp-endpoint", collector.url + "/v1/traces", "--pythonpath",
                 str(otel), "--auth-token-file", str(tmp_path / "tokens"), cwd=SERVERS,
                 env=traced_env(token)) as server:
        import httpx

        reply = httpx.post(server.url, json=INITIALIZE, timeout=30, headers={
            "authorization": "Bearer token-0123456789abcdef", "traceparent": TRACEPARENT,
            "accept": "application/json, text/event-stream", "content-type": "application/json"})
        assert reply.status_code == 200, reply.text
        refused = httpx.post(server.url, json=INITIALIZE, timeout=30, headers={"traceparent": TRACEPARENT})
        assert refused.status_code == 401
        assert server.stop() == 0
    gateway = [span for span in collector.spans() if span["scope"] == "mcprun"]
    assert sorted((span["attributes"]["http.response.status_code"], span["attributes"].get("enduser.id"))
                  for span in gateway) == [(200, "ci-bot"), (401, None)], gateway


def test_stdio_spans_arrive_when_the_client_closes(token, otel, collector):
    call = tools_call(2, "echo", {"text": "traced"})
    call["params"]["_meta"] = {"traceparent": TRACEPARENT}
    result = stdio_exchange([*mcprun_command(), "fastmcp_server.py", "--otlp-endpoint", collector.url,
                             "--pythonpath", str(otel)], [INITIALIZE, INITIALIZED, call], token, cwd=SERVERS,
                            env=traced_env(token))  # the batch's 5 s delay: only the flush at exit sends them
    assert result.returncode == 0, result.stderr
    assert '"traced"' in result.stdout
    called = [span for span in collector.spans() if span["attributes"].get("mcp.method.name") == "tools/call"]
    assert [(span["scope"], span["trace"], span["parent"], span["resource"]["service.name"]) for span in called] \
        == [("fastmcp", CLIENT_TRACE, CLIENT_SPAN, "traced-demo")], collector.spans()


def test_service_name_defaults_to_the_servers_name(token, otel, collector):
    env = traced_env(token)
    env.pop("OTEL_SERVICE_NAME")
    result = stdio_exchange([*mcprun_command(), "fastmcp_server.py", "--pythonpath", str(otel)],
                            [INITIALIZE, INITIALIZED, tools_call(2, "echo", {"text": "x"})], token, cwd=SERVERS,
                            env={**env, "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url})  # the standard variable
    assert result.returncode == 0, result.stderr
    assert {span["resource"]["service.name"] for span in collector.spans()} == {"Demo"}


@needs_strace
def test_no_endpoint_no_connection_and_no_sdk_imported(token, otel, collector, tmp_path):
    """The SDK's folder on --pythonpath and OTEL_SERVICE_NAME set, but no endpoint: nothing of the SDK is
    opened (so nothing imported), nothing connects, the receiver hears nothing."""
    log = tmp_path / "strace.log"
    result = stdio_exchange(["strace", "-f", "-qq", "-e", "trace=connect,open,openat", "-o", str(log),
                             *mcprun_command(), "fastmcp_server.py", "--pythonpath", str(otel)],
                            [INITIALIZE, INITIALIZED, tools_call(2, "echo", {"text": "quiet"})], token, cwd=SERVERS,
                            env=traced_env(token))
    assert result.returncode == 0, result.stderr
    assert '"quiet"' in result.stdout
    trace = log.read_text().splitlines()
    assert [line for line in trace if "connect(" in line and re.search(r"AF_INET6?\b", line)] == []
    assert any("fastmcp_server.py" in line for line in trace)  # opens are seen: the server's file
    sdk = (f"{otel}/opentelemetry/sdk/", f"{otel}/opentelemetry/exporter/", f"{otel}/google/")
    assert [line for line in trace if any(folder in line for folder in sdk) and "O_DIRECTORY" not in line] == []
    assert collector.posts == []


def test_without_the_sdk_one_error_line(token):
    version = otel_version()
    advice = (f"needs the OpenTelemetry SDK and its OTLP exporter: make a folder with 'mcprun vendor "
              f"opentelemetry-sdk=={version} opentelemetry-exporter-otlp-proto-http=={version} -o FOLDER' and add "
              "--pythonpath FOLDER")
    result = run_cli(token, "fastmcp_server.py", "--otlp-endpoint", "http://127.0.0.1:4318", cwd=SERVERS, input="")
    assert error_line(result, 2) == f"mcprun: error: --otlp-endpoint {advice}"
    result = run_cli(token, "fastmcp_server.py", cwd=SERVERS, input="",
                     env=child_env(token, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:4318"))
    assert error_line(result, 2) == f"mcprun: error: OTEL_EXPORTER_OTLP_ENDPOINT {advice}"


def test_an_endpoint_that_is_no_url(token):
    result = run_cli(token, "fastmcp_server.py", "--otlp-endpoint", "collector:4318", cwd=SERVERS)
    assert usage_error(result).endswith("argument --otlp-endpoint: 'collector:4318' is not an http(s):// URL "
                                        "(e.g. http://127.0.0.1:4318)")
    result = run_cli(token, "fastmcp_server.py", cwd=SERVERS, env=child_env(token, MCPRUN_OTLP_ENDPOINT="4318"))
    assert error_line(result, 2) == ("mcprun: error: MCPRUN_OTLP_ENDPOINT='4318': '4318' is not an http(s):// URL "
                                     "(e.g. http://127.0.0.1:4318)")


def test_a_proxy_passes_the_trace_on_to_its_upstream(token, otel, collector):
    call = tools_call(2, "echo", {"text": "through"})
    call["params"]["_meta"] = {"traceparent": TRACEPARENT}
    traces = ["--otlp-endpoint", collector.url, "--pythonpath", str(otel)]
    with serving(token, "fastmcp_server.py", *traces, cwd=SERVERS, env=traced_env(token)) as upstream:
        result = stdio_exchange([*mcprun_command(), upstream.url, *traces], [INITIALIZE, INITIALIZED, call], token,
                                env=traced_env(token, OTEL_SERVICE_NAME="proxy"))
        assert result.returncode == 0, result.stderr
        assert '"through"' in result.stdout
        assert upstream.stop() == 0
    spans = collector.spans()
    ours = {span["id"] for span in spans if span["resource"]["service.name"] == "proxy"}
    gateway = [span for span in spans if span["scope"] == "mcprun"
               and span["attributes"].get("mcp.method.name") == "tools/call"]
    assert len(gateway) == 1 and gateway[0]["trace"] == CLIENT_TRACE and gateway[0]["parent"] in ours, spans
