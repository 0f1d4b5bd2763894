"""Every spec form, end to end: fastmcp's Client on stdio, http and sse; the SDK client on a subset."""

import json
import os
import re
import platform
import subprocess
import sys
import urllib.request
from importlib.metadata import version

import pytest
from helpers import (
    DEMO_RESULT, ROOT, SERVERS, child_env, exercise_fastmcp, exercise_sdk, run_async, run_cli, serving, started,
    stdio_transport,
)

# id -> (mcprun arguments, folder to run it from)
SPECS = {
    "file default mcp": (["fastmcp_server.py"], SERVERS),
    "file default server": (["defines_server.py"], SERVERS),
    "file default app": (["defines_app.py"], SERVERS),
    "file mcp before server and app": (["defines_mcp_server_app.py"], SERVERS),
    "file server before app": (["defines_server_app.py"], SERVERS),
    "file mcp not a server, app is": (["defines_mcp_not_a_server.py"], SERVERS),
    "file:name": (["named_objects.py:custom"], SERVERS),
    "file:sync_factory": (["named_objects.py:create_server"], SERVERS),
    "file:async_factory": (["named_objects.py:create_server_async"], SERVERS),
    "package file from another cwd": (["tests/servers/pkg/sub/server.py"], ROOT),
    "pkg.module:name": (["pkg.sub.server:mcp"], SERVERS),
    "pkg.module": (["pkg.sub.server"], SERVERS),
    "module:async_factory": (["named_objects:create_server_async"], SERVERS),
    "sdk file": (["sdk_server.py"], SERVERS),
    "sdk file:name": (["sdk_server.py:server"], SERVERS),
    "file that starts its server when imported": (["runs_at_import.py"], SERVERS),
}
# The official SDK client runs against these too (every transport); fastmcp's Client against all.
SDK_CLIENT_SPECS = ("file default mcp", "file default app", "file:async_factory", "package file from another cwd",
                    "pkg.module", "sdk file")


@pytest.mark.parametrize("spec, cwd", SPECS.values(), ids=SPECS.keys())
def test_stdio_fastmcp_client(token, spec, cwd):
    assert run_async(exercise_fastmcp(stdio_transport(token, *spec, cwd=cwd))) == DEMO_RESULT


@pytest.mark.parametrize("name", SDK_CLIENT_SPECS)
def test_stdio_sdk_client(token, name, monkeypatch):
    spec, cwd = SPECS[name]
    monkeypatch.chdir(cwd)  # the SDK's stdio client starts mcprun in the current folder
    assert run_async(exercise_sdk("stdio", spec, token)) == DEMO_RESULT


@pytest.mark.parametrize("transport", ["http", "sse"])
@pytest.mark.parametrize("spec, cwd", SPECS.values(), ids=SPECS.keys())
def test_http_and_sse(token, spec, cwd, transport):
    with serving(token, *spec, transport=transport, cwd=cwd) as server:
        assert server.url.endswith("/sse" if transport == "sse" else "/mcp")
        assert run_async(exercise_fastmcp(server.url)) == DEMO_RESULT
        if any(SPECS[name] == (spec, cwd) for name in SDK_CLIENT_SPECS):
            assert run_async(exercise_sdk(transport, server.url)) == DEMO_RESULT


def test_sdk_server_defaults_to_stdio(token):
    # fastmcp run serves an SDK MCPServer over streamable HTTP by default; mcprun keeps stdio for all.
    result = run_cli(token, "sdk_server.py", cwd=SERVERS, input="")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == "mcprun: serving 'Demo' from sdk_server.py over stdio\n"


# -- -m: the module starts its own server -------------------------------------


@pytest.mark.parametrize("transport, route", [("http", "/mcp"), ("sse", "/sse")])
def test_module_http_and_sse(token, transport, route):
    # The module's bare mcp.run() is caught: mcprun serves that server on its own transport and port, gateway included.
    with serving(token, "-m", "runnable_module", transport=transport, cwd=SERVERS) as server:
        assert server.url.endswith(route)
        assert run_async(exercise_fastmcp(server.url)) == DEMO_RESULT
        assert run_async(exercise_sdk(transport, server.url)) == DEMO_RESULT
        health = urllib.request.urlopen(server.url.replace(route, "/healthz"), timeout=10).read()
    assert json.loads(health) == {"status": "ok"}
    assert "mcprun: ready: serving 'Demo' from runnable_module over " in server.stderr
    assert "warning" not in server.stderr


# -- command-line entry points named as SPEC (module:function) ------------------


async def greeting(target) -> str:
    from fastmcp import Client

    async with Client(target) as client:
        return (await client.call_tool("greet", {})).content[0].text


def test_entry_point_function_over_stdio_sees_its_arguments(token):
    transport = stdio_transport(token, "cli_app:main", "--", "--greeting", "bonjour", cwd=SERVERS)
    assert run_async(greeting(transport)) == "bonjour"


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_entry_point_function_is_served_on_the_transport_mcprun_is_given(token, transport):
    # main() calls mcp.run() (stdio); mcprun catches the server and serves it, gateway included, where it is told
    with started(token, "cli_app:main", "-t", transport, "-p", "0", "--", "--greeting", "hej", cwd=SERVERS) as server:
        assert run_async(greeting(server.url)) == "hej"
    assert "mcprun: ready: serving 'CLI app' from cli_app:main over " in server.stderr


# -- server arguments, 'run', --version ----------------------------------------

SERVER_ARGS = {
    "after --": (["fastmcp_server.py", "--", "a", "b"], "a b"),
    "without --": (["fastmcp_server.py", "a", "b"], "a b"),
    "options after --": (["fastmcp_server.py", "--", "--config", "dev.toml", "-v"], "--config dev.toml -v"),
    "mcprun options before --": (["fastmcp_server.py", "--no-banner", "--", "a"], "a"),
    "sdk file": (["sdk_server.py", "--", "a", "b"], "a b"),
    "factory": (["named_objects.py:create_server", "a", "b"], "a b"),
    "import string": (["pkg.sub.server:mcp", "--", "a", "b"], "a b"),
    "-m": (["-m", "runnable_module", "--", "a", "b"], "a b"),
}


@pytest.mark.parametrize("args, expected", SERVER_ARGS.values(), ids=SERVER_ARGS.keys())
def test_server_args_stdio(token, args, expected):
    result = run_async(exercise_fastmcp(stdio_transport(token, *args, cwd=SERVERS)))
    assert result == {**DEMO_RESULT, "argv": expected}


def test_server_args_sdk_client(token, monkeypatch):
    monkeypatch.chdir(SERVERS)
    result = run_async(exercise_sdk("stdio", ["sdk_server.py", "a", "b"], token))
    assert result == {**DEMO_RESULT, "argv": "a b"}


def test_server_args_http(token):
    # Positional server args, then the flags serving() appends.
    with serving(token, "fastmcp_server.py", "a", "b", cwd=SERVERS) as server:
        assert run_async(exercise_fastmcp(server.url)) == {**DEMO_RESULT, "argv": "a b"}


def test_server_args_after_dashes_http(token):
    with started(token, "fastmcp_server.py", "-t", "http", "-p", "0", "--", "-t", "stdio", cwd=SERVERS) as server:
        assert run_async(exercise_fastmcp(server.url)) == {**DEMO_RESULT, "argv": "-t stdio"}
        assert run_async(exercise_sdk("http", server.url)) == {**DEMO_RESULT, "argv": "-t stdio"}


def test_run_subcommand_stdio(token):
    assert run_async(exercise_fastmcp(stdio_transport(token, "run", "fastmcp_server.py", cwd=SERVERS))) == DEMO_RESULT


def test_run_subcommand_http(token):
    with serving(token, "run", "sdk_server.py", "x", cwd=SERVERS) as server:
        assert run_async(exercise_sdk("http", server.url)) == {**DEMO_RESULT, "argv": "x"}


def expected_version_line() -> str:
    return (f"fastmcp {version('fastmcp')}, mcp {version('mcp')}, Python {platform.python_version()}, "
            f"{platform.system()}-{platform.machine()})\n")


def test_version(token, tmp_path):
    result = run_cli(token, "--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stderr == ""
    name, release, rest = result.stdout.split(" ", 2)
    expected = "(" + expected_version_line()
    if os.environ.get("MCPRUN_UNDER_TEST"):  # an artifact carries its own Python
        expected = re.sub(r"Python [0-9.]+,", f"Python {re.search(r'Python ([0-9.]+),', rest)[1]},", expected)
        assert re.search(r"Python 3\.1[1-9]\.[0-9]+,", rest)
    assert (name, rest) == ("mcprun", expected)
    assert release[0].isdigit()


def test_python_dash_m_version(token):
    def run(*args):
        return subprocess.run([sys.executable, *args, "--version"], cwd=ROOT, env=child_env(token),
                              capture_output=True, text=True, timeout=60)

    result = run("-m", "mcprun")
    assert result.returncode == 0
    assert result.stderr == ""
    assert result.stdout == run("mcprun.py").stdout
    assert result.stdout.startswith("mcprun ") and result.stdout.endswith(expected_version_line())
