"""The tool policy (--tools, --exclude-tools, --read-only) on every kind of server, over stdio and HTTP.

A tool left out is absent from tools/list, and a call to it is answered exactly as the server
answers a tool it does not have (compared here with a call to a made-up name).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from helpers import SERVERS, run_cli, serving, stdio_transport

SERVER_KINDS = {  # spec -> (a tool the policy leaves out, a tool it keeps)
    "fastmcp_server.py": ("echo", "argv"),
    "sdk_server.py": ("echo", "argv"),
    "compat/mcp1_full.py": ("echo", "refuse"),
    "compat/lowlevel_object.py": ("add", "boom"),
}
LOWLEVEL_2X = '''"""An mcp 2.x low-level server: handlers given to the constructor, an unknown tool is a JSON-RPC error."""
import mcp.types as types
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import MCPError

SCHEMA = {"type": "object", "properties": {}}


async def list_tools(ctx, params):
    return types.ListToolsResult(tools=[types.Tool(name="add", input_schema=SCHEMA),
                                        types.Tool(name="keep", input_schema=SCHEMA)])


async def call_tool(ctx, params):
    if params.name in ("add", "keep"):
        return types.CallToolResult(content=[types.TextContent(type="text", text=params.name)])
    raise MCPError(-32602, f"no tool named {params.name}")


app = Server("lowlevel-2x", on_list_tools=list_tools, on_call_tool=call_tool)
'''
READ_ONLY_SERVER = '''from fastmcp import FastMCP

mcp = FastMCP("Files")


@mcp.tool(annotations={"readOnlyHint": True})
def read_file(path: str) -> str:
    return "read " + path


@mcp.tool(annotations={"readOnlyHint": False, "destructiveHint": True})
def delete_file(path: str) -> str:
    return "deleted " + path


@mcp.tool
def touch_file(path: str) -> str:
    return "touched " + path
'''


def answer_text(outcome) -> tuple:
    """What a call came back with: (is an error, its text), whether a result or a raised error."""
    if isinstance(outcome, BaseException):
        return True, str(outcome)
    return outcome.is_error, " ".join(getattr(item, "text", "") for item in outcome.content)


async def look(target, left_out: str, kept: str) -> dict:
    from fastmcp import Client

    async def call(client, name):
        try:
            return await client.call_tool(name, {}, raise_on_error=False)
        except Exception as exc:  # an SDK low-level server answers a JSON-RPC error
            return exc

    async with Client(target) as client:
        names = sorted(tool.name for tool in await client.list_tools())
        denied = answer_text(await call(client, left_out))
        unknown = answer_text(await call(client, "no_such_tool_here"))
    return {"names": names, "denied": denied, "unknown": (unknown[0], unknown[1].replace("no_such_tool_here", left_out))}


@pytest.mark.parametrize("transport", ["stdio", "http"])
@pytest.mark.parametrize("spec", SERVER_KINDS)
def test_a_tool_left_out_is_unlisted_and_answered_as_unknown(token, spec, transport):
    left_out, kept = SERVER_KINDS[spec]
    policy = ["--exclude-tools", left_out]
    if transport == "stdio":
        seen = asyncio.run(asyncio.wait_for(look(stdio_transport(token, spec, *policy, cwd=SERVERS), left_out, kept),
                                            90))
    else:
        with serving(token, spec, *policy, cwd=SERVERS) as server:
            seen = asyncio.run(asyncio.wait_for(look(server.url, left_out, kept), 90))
    assert left_out not in seen["names"] and kept in seen["names"], seen
    assert seen["denied"] == seen["unknown"], seen
    assert seen["denied"][0] is True


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_a_json_rpc_unknown_tool_error_is_given_for_a_tool_left_out(token, tmp_path, transport):
    (tmp_path / "low.py").write_text(LOWLEVEL_2X)
    if transport == "stdio":
        seen = asyncio.run(asyncio.wait_for(look(stdio_transport(token, "low.py", "--exclude-tools", "add",
                                                                 cwd=tmp_path), "add", "keep"), 90))
    else:
        with serving(token, "low.py", "--exclude-tools", "add", cwd=tmp_path) as server:
            seen = asyncio.run(asyncio.wait_for(look(server.url, "add", "keep"), 90))
    assert seen["names"] == ["keep"]
    assert seen["denied"] == seen["unknown"] == (True, "no tool named add"), seen


def test_the_policy_holds_through_a_url_proxy(token):
    with serving(token, "fastmcp_server.py", cwd=SERVERS) as upstream:
        seen = asyncio.run(asyncio.wait_for(look(stdio_transport(token, upstream.url, "--tools", "arg*"), "echo",
                                                 "argv"), 90))
    assert seen["names"] == ["argv"]
    assert seen["denied"] == seen["unknown"], seen


def test_read_only_and_allow_list(token, tmp_path):
    (tmp_path / "files.py").write_text(READ_ONLY_SERVER)

    async def names(*policy):
        from fastmcp import Client

        async with Client(stdio_transport(token, "files.py", *policy, cwd=tmp_path)) as client:
            listed = sorted(tool.name for tool in await client.list_tools())
            called = await client.call_tool("delete_file", {"path": "x"}, raise_on_error=False)
            return listed, called.is_error, called.content[0].text

    run = lambda *policy: asyncio.run(asyncio.wait_for(names(*policy), 90))  # noqa: E731
    assert run("--read-only") == (["read_file"], True, "Unknown tool: 'delete_file'")
    assert run("--tools", "*_file", "--exclude-tools", "read_*") == (["delete_file", "touch_file"], False,
                                                                     "deleted x")
    assert run() == (["delete_file", "read_file", "touch_file"], False, "deleted x")


def test_check_shows_what_the_policy_leaves(token, tmp_path):
    (tmp_path / "files.py").write_text(READ_ONLY_SERVER)
    result = run_cli(token, "check", "files.py", "--read-only", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [tool["name"] for tool in json.loads(result.stdout)["tools"]] == ["read_file"]


def test_policy_from_the_environment(token, tmp_path):
    (tmp_path / "files.py").write_text(READ_ONLY_SERVER)
    from helpers import child_env

    result = run_cli(token, "check", "files.py", "--json", cwd=tmp_path,
                     env=child_env(token, MCPRUN_EXCLUDE_TOOLS="delete_*,touch_*"))
    assert [tool["name"] for tool in json.loads(result.stdout)["tools"]] == ["read_file"]
