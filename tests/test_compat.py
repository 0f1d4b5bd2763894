"""Servers written for older generations of the stack, run unmodified: mcp 1.x FastMCP files, mcp 1.x
low-level servers (objects and self-starting scripts), fastmcp 2/3-era packages, through real clients."""

from __future__ import annotations

import json
import subprocess

import pytest
from helpers import (DEMO_RESULT, INITIALIZE, INITIALIZED, ROOT, SERVERS, child_env, free_port, mcprun_command,
                      run_async, run_cli, serving, started, stdio_exchange, stdio_transport, tools_call)

COMPAT = SERVERS / "compat"
THIRD_PARTY = ROOT / "build-cache" / "third-party"
MCP1_PYTHON = ROOT / ".venv-mcp1" / "bin" / "python"
MCP1_CLIENT = ROOT / "tests" / "clients" / "mcp1_client.py"
TRANSPORTS = ["stdio", "http", "sse"]
needs_third_party = pytest.mark.skipif(not (THIRD_PARTY / "mcp_server_calculator").exists(),
                                       reason="run './build test' to install the third-party servers")


def target(token, transport: str, *args: str, cwd=COMPAT):
    """A context manager yielding what fastmcp's Client connects to: a stdio transport or a URL."""
    import contextlib

    if transport == "stdio":
        return contextlib.nullcontext(stdio_transport(token, *args, cwd=cwd))

    @contextlib.contextmanager
    def over_http():
        with serving(token, *args, transport=transport, cwd=cwd) as server:
            yield sse_or_url(server.url, transport)

    return over_http()


def sse_or_url(url: str, transport: str):
    if transport == "sse":
        from fastmcp.client.transports import SSETransport

        return SSETransport(url)
    return url


async def session_results(where, steps) -> list:
    """Open one fastmcp Client session and run steps(client) -> list of results."""
    from fastmcp import Client

    async with Client(where) as client:
        return await steps(client)


def text(result) -> str:
    return result.content[0].text


# -- mcp 1.x FastMCP (mcp.server.fastmcp) ---------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_mcp1_fastmcp_file(token, transport):
    async def steps(client):
        tools = sorted(tool.name for tool in await client.list_tools())
        progress = []
        work = await client.call_tool("work", {"steps": 3},
                                      progress_handler=lambda done, total, message: progress.append(done) or None)
        pixel = await client.call_tool("pixel", {})
        refused = await client.call_tool("refuse", {"reason": "no"}, raise_on_error=False)
        profile = await client.read_resource("users://ada/profile")
        review = await client.get_prompt("review", {"code": "x = 1"})
        echo = await client.call_tool("echo", {"text": "hi"})
        return [tools, text(work), progress, pixel.content[0].mime_type, pixel.content[0].data[:8],
                refused.is_error, text(refused), profile[0].text, [m.role for m in review.messages], text(echo)]

    with target(token, transport, "mcp1_full.py") as where:
        results = run_async(session_results(where, steps))
    assert results == [["echo", "pixel", "refuse", "work"], "Legacy/open/3/True", [1.0, 2.0, 3.0], "image/png",
                       "iVBORw0K", True, "Error executing tool refuse: refused: no", "profile of ada", ["user", "assistant"], "hi"]


@pytest.mark.skipif(not MCP1_PYTHON.exists(), reason="run './build test' to create .venv-mcp1")
@pytest.mark.parametrize("transport", ["stdio", "http", "sse"])
def test_mcp1_fastmcp_file_with_an_mcp1_client(token, transport):
    expected = {key: value for key, value in DEMO_RESULT.items() if key != "argv"}
    expected["tools"] = ["echo", "pixel", "refuse", "work"]
    if transport == "stdio":
        args = [transport, *mcprun_command(), str(COMPAT / "mcp1_full.py")]
        result = subprocess.run([str(MCP1_PYTHON), str(MCP1_CLIENT), *args], capture_output=True, text=True,
                                timeout=90, env=child_env(token))
    else:
        with serving(token, "mcp1_full.py", transport=transport, cwd=COMPAT) as server:
            result = subprocess.run([str(MCP1_PYTHON), str(MCP1_CLIENT), transport, server.url],
                                    capture_output=True, text=True, timeout=90, env=child_env(token))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == expected


def test_mcp1_constructor_settings_are_adopted_unless_given(token):
    port = free_port()
    env = child_env(token, SETTINGS_PORT=str(port))
    with started(token, "mcp1_settings.py", "-t", "http", cwd=COMPAT, env=env) as server:
        assert server.url == f"http://127.0.0.1:{port}/custom"
        assert text(run_async(session_results(server.url, lambda c: _one(c, "where")))) == f"/custom {port}"
    with started(token, "mcp1_settings.py", "-t", "sse", "-p", "0", "--path", "/given", cwd=COMPAT, env=env) as server:
        assert server.url.endswith("/given") and f":{port}/" not in server.url
        assert text(run_async(session_results(sse_or_url(server.url, "sse"), lambda c: _one(c, "where"))))


async def _one(client, tool: str, arguments: dict | None = None):
    return await client.call_tool(tool, arguments or {})


def test_mcp1_file_that_runs_itself_under_script(token):
    """--script: the file's own mcp.run(transport="sse") picks the transport; mcprun's --port still counts."""
    with started(token, "--script", "mcp1_selfrun.py", "-p", "0", cwd=COMPAT) as server:
        assert server.url.endswith("/sse")
        result = run_async(session_results(sse_or_url(server.url, "sse"), lambda c: _one(c, "echo", {"text": "me"})))
    assert text(result) == "me"


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_mcp1_submodule_imports_and_factory(token, transport):
    async def steps(client):
        kinds = await client.call_tool("kinds", {})
        note = await client.read_resource("memo://note")
        ask = await client.get_prompt("ask", {"question": "why?"})
        crash = await client.call_tool("crash", {}, raise_on_error=False)  # mcp 1.x showed the exception text
        return [text(kinds), note[0].text, ask.messages[0].content.text, crash.is_error, text(crash)]

    with target(token, transport, "mcp1_utilities.py:create_server") as where:
        assert run_async(session_results(where, steps)) == ["True Image Utilities", "a note", "why?", True,
                                                            "Error executing tool crash: it broke"]


def test_no_compat_turns_the_mapping_off(token):
    result = run_cli(token, "mcp1_full.py", "--no-compat", cwd=COMPAT, input="")
    assert result.returncode == 1
    assert "mcprun: error: mcp1_full.py imports 'mcp.server.fastmcp', which the bundled mcp" in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_line_names_the_path_a_server_took(token):
    result = run_cli(token, "mcp1_full.py", "--log-level", "DEBUG", cwd=COMPAT, input="")
    assert "(mcp 1.x FastMCP, mapped onto mcp 2.x MCPServer)" in result.stderr
    result = run_cli(token, "lowlevel_object.py", "--log-level", "DEBUG", cwd=COMPAT, input="")
    assert "(low-level mcp Server)" in result.stderr


# -- mcp 1.x low-level Server ---------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_lowlevel_server_object(token, transport):
    async def steps(client):
        tools = sorted(tool.name for tool in await client.list_tools())
        added = await client.call_tool("add", {"a": 2, "b": 3.5})
        boom = await client.call_tool("boom", {}, raise_on_error=False)
        memo = await client.read_resource("memo://one")
        prompt = await client.get_prompt("greet", {})
        return [tools, text(added), boom.is_error, text(boom), memo[0].text,
                prompt.messages[0].content.text.startswith("hello from ")]

    with target(token, transport, "lowlevel_object.py") as where:
        assert run_async(session_results(where, steps)) == [["add", "boom"], "5.5", True, "it broke", "memo one", True]


def test_self_starting_lowlevel_script(token):
    result = stdio_exchange([*mcprun_command(), "--script", "lowlevel_script.py", "--", "bonjour"],
                            [INITIALIZE, INITIALIZED, tools_call(2, "greet", {})], token, cwd=COMPAT)
    assert result.returncode == 0, result.stderr
    replies = [json.loads(line) for line in result.stdout.splitlines()]
    assert replies[-1]["result"]["content"][0]["text"] == "bonjour"


def test_script_hint_when_a_file_starts_its_own_server(token):
    result = run_cli(token, "lowlevel_script.py", cwd=COMPAT, input="")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("run it with --script")


# -- names, shadowing, httpx ------------------------------------------------------------------


def test_the_only_server_object_is_used_and_named(token):
    with serving(token, "odd_name.py", cwd=COMPAT) as server:
        assert text(run_async(session_results(server.url, lambda c: _one(c, "forecast")))) == "sunny"
    assert "mcprun: using 'weather_service', the only server object in odd_name.py" in server.stderr


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_files_named_like_bundled_packages_do_not_shadow_them(token, transport):
    with target(token, transport, "server.py", cwd=COMPAT / "shadowed") as where:
        assert text(run_async(session_results(where, lambda c: _one(c, "echo", {"text": "safe"})))) == "safe"


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_server_importing_httpx(token, transport):
    with target(token, transport, "httpx_server.py") as where:
        assert text(run_async(session_results(where, lambda c: _one(c, "fetch", {"path": "/x"})))) == "got /x"


# -- third-party servers from PyPI (packaging/third-party.lock) ------------------------------

THIRD_PARTY_CASES = {
    # name: (spec args, tool, arguments, expected text fragment)
    "mcp-server-calculator (mcp 1.x FastMCP)": (
        ["mcp_server_calculator/calculator.py"], "calculate", {"expression": "2*(3+4)"}, "14"),
    "mark-anthony-calculator-mcp (mcp 1.x low-level Server)": (
        ["calculator_mcp/__main__.py"], "add", {"num1": 2, "num2": 3}, "5"),
    "mcp-server-time (self-starting low-level script, -m)": (
        ["-m", "mcp_server_time", "--pythonpath", "."], "convert_time",
        {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}, "T21:00:00+09:00"),
    "clinical-calc-mcp (fastmcp 2.x era)": (
        ["clinical_calc_mcp/server.py"], "bsa_mosteller", {"weight_kg": 70, "height_cm": 175}, '"bsa_m2":1.84'),
    "factorial-mcp-server (fastmcp 3.x era)": (
        ["factorial_server.py"], "factorial_value", {"n": 5}, "The factorial of 5 is: 120"),
}


@needs_third_party
@pytest.mark.parametrize("case", THIRD_PARTY_CASES)
def test_third_party_over_stdio(token, case):
    args, tool, arguments, expected = THIRD_PARTY_CASES[case]
    result = stdio_exchange([*mcprun_command(), *args], [INITIALIZE, INITIALIZED, tools_call(2, tool, arguments)],
                            token, cwd=THIRD_PARTY)
    assert result.returncode == 0, result.stderr
    replies = [json.loads(line) for line in result.stdout.splitlines()]  # nothing but protocol on stdout
    assert expected in replies[-1]["result"]["content"][0]["text"]


@needs_third_party
@pytest.mark.parametrize("transport", ["http", "sse"])
@pytest.mark.parametrize("case", [case for case in THIRD_PARTY_CASES if "-m" not in THIRD_PARTY_CASES[case][0]])
def test_third_party_over_http(token, case, transport):
    args, tool, arguments, expected = THIRD_PARTY_CASES[case]
    with serving(token, *args, transport=transport, cwd=THIRD_PARTY) as server:
        result = run_async(session_results(sse_or_url(server.url, transport), lambda c: _one(c, tool, arguments)))
    assert expected in text(result)


# -- fastmcp 2.x/3.x files -------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_fastmcp3_style_file(token, transport):
    async def steps(client):
        tools = sorted(tool.name for tool in await client.list_tools())
        forecast = await client.call_tool("weather_forecast", {"city": "Oslo"})
        celsius = await client.call_tool("units_celsius", {"fahrenheit": 212})
        kinds = await client.call_tool("kinds", {})
        sampled = await client.call_tool("summarize", {"text": "x"}, raise_on_error=False)
        switched = [[prompt.name for prompt in await client.list_prompts()],
                    [str(resource.uri) for resource in await client.list_resources()]]
        return [tools, text(forecast), text(celsius), text(kinds), sampled.is_error, text(sampled), switched]

    with target(token, transport, "fastmcp3_style.py") as where:
        results = run_async(session_results(where, steps))
    assert results[:5] == [["kinds", "summarize", "switched_on", "units_celsius", "weather_forecast"],
                           "sunny in Oslo", "100.0", "fastmcp.tools.base", True]
    assert "ctx.sample() was removed in fastmcp 4 and mcprun cannot map it: call an LLM" in results[5]
    assert results[6] == [[], []]  # enabled=False (fastmcp 2.x): registered, not listed


def test_fastmcp3_constructor_port_is_adopted_and_each_mapping_said_once(token):
    port = free_port()
    with started(token, "fastmcp3_style.py", "-t", "http", cwd=COMPAT, env=child_env(token, OLD_PORT=str(port))) as server:
        assert server.url == f"http://127.0.0.1:{port}/mcp"
    warnings = [line for line in server.lines if line.startswith("mcprun: warning:")]
    assert len(warnings) == len(set(warnings)) == 10, warnings  # module, 4 constructor arguments, mount, import,
    # and enabled= in tool(), prompt() and resource()
    assert "mcprun: warning: tool(enabled=...) is fastmcp 2.x/3.x API, mapped by mcprun: tool() then, for " \
           "enabled=False, server.disable(names=...)\n" in warnings
    assert any("fastmcp.tools.tool is fastmcp 2.x/3.x: mapped onto fastmcp.tools.base" in line for line in warnings)
    assert any("mount(prefix, server) is fastmcp 2.x/3.x API" in line for line in warnings)


def test_fastmcp3_api_without_a_mapping_is_one_error_line(token):
    result = run_cli(token, "fastmcp3_refused.py", cwd=COMPAT, input="")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcprun: error: importing fastmcp3_refused.py failed: TypeError: "
                                                   "FastMCP() no longer accepts `tool_serializer`. Return ToolResult")


def test_no_compat_leaves_fastmcp3_calls_failing(token):
    result = run_cli(token, "fastmcp3_style.py", "--no-compat", cwd=COMPAT, input="")
    assert result.returncode == 1
    assert "No module named 'fastmcp.tools.tool'" in result.stderr


@pytest.mark.parametrize("spec, path", [
    ("mcp1_full.py", "'Legacy' from mcp1_full.py: mcp 1.x FastMCP, mapped onto mcp 2.x MCPServer"),
    ("lowlevel_object.py", "'lowlevel-calc' from lowlevel_object.py: low-level mcp Server"),
    ("fastmcp3_style.py", "'Old style' from fastmcp3_style.py: fastmcp 4 FastMCP, with fastmcp 2.x/3.x arguments"),
    ("httpx_server.py", "'Uses httpx' from httpx_server.py: fastmcp 4 FastMCP"),
])
def test_print_config_names_the_path_a_server_takes(token, spec, path):
    result = run_cli(token, spec, "--print-config", cwd=COMPAT)
    assert result.returncode == 0, result.stderr
    name, _, value = result.stdout.splitlines()[-1].partition(" = ")
    assert name.strip() == "server" and value.startswith(path)
