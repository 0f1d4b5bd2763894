"""The tool policy (--tools, --exclude-tools, --read-only) on every kind of server, over stdio and HTTP.

A tool left out is absent from tools/list, and a call to it is answered exactly as the server
answers a tool it does not have (compared here with a call to a made-up name).
"""

from __future__ import annotations

import asyncio
import json
import shutil

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


# -- resources and prompts ---------------------------------------------------------------------


async def look_at_resources_and_prompts(target) -> dict:
    """What a client sees of the demo resource and prompt, and how reading/getting them and made-up ones ends."""
    from fastmcp import Client

    async def outcome(ask, left_out: str, made_up: str) -> tuple:
        answers = []
        for name in (left_out, made_up):
            try:
                answers.append(("ok", str(await ask(name))))
            except Exception as exc:
                data = json.dumps(getattr(getattr(exc, "error", None), "data", None))
                answers.append((type(exc).__name__, str(exc).replace(name, "NAME"), data.replace(name, "NAME")))
        return tuple(answers)

    async with Client(target) as client:
        return {
            "resources": sorted(str(resource.uri) for resource in await client.list_resources()),
            "templates": sorted(template.uri_template for template in await client.list_resource_templates()),
            "prompts": sorted(prompt.name for prompt in await client.list_prompts()),
            "read": await outcome(client.read_resource, "demo://greeting", "demo://made-up"),
            "read by template": await outcome(client.read_resource, "users://7/profile", "demo://made-up"),
            "got": await outcome(lambda name: client.get_prompt(name, {"topic": "x"}), "summarize", "made_up"),
            "tools": sorted(tool.name for tool in await client.list_tools()),
        }


@pytest.mark.parametrize("spec, transport", [("fastmcp_server.py", "http"), ("sdk_server.py", "stdio"),
                                             ("compat/mcp1_full.py", "stdio")])
def test_resources_and_prompts_left_out_are_unlisted_and_answered_as_unknown(token, spec, transport):
    policy = ["--exclude-resources", "demo://*", "--exclude-resources", "users://*", "--prompts", "nothing_*"]
    if transport == "stdio":
        seen = asyncio.run(asyncio.wait_for(look_at_resources_and_prompts(
            stdio_transport(token, spec, *policy, cwd=SERVERS)), 90))
    else:
        with serving(token, spec, *policy, cwd=SERVERS) as server:
            seen = asyncio.run(asyncio.wait_for(look_at_resources_and_prompts(server.url), 90))
    assert seen["resources"] == seen["templates"] == seen["prompts"] == [], seen
    for asked in ("read", "read by template", "got"):
        left_out, made_up = seen[asked]
        assert left_out[0] != "ok" and left_out == made_up, (asked, seen)
        assert "not-offered" not in left_out[2], seen
    assert "echo" in seen["tools"]  # tools are not narrowed by these


# -- tools per caller: --policy FILE -----------------------------------------------------------

POLICY = """\
# who          tools
alice          *
ci-bot         git_status git_commit
scope:write    git_* !git_push
*              git_status
"""
ANY_NAME_SERVER = '''"""A low-level server that runs whatever name it is asked for: a left-out name must never reach it."""
import sys

import mcp.types as types
from mcp.server.lowlevel import Server


async def list_tools(ctx, params):
    return types.ListToolsResult(tools=[types.Tool(name="drop_table", input_schema={"type": "object"})])


async def call_tool(ctx, params):
    print("ran", params.name, file=sys.stderr, flush=True)
    return types.CallToolResult(content=[types.TextContent(type="text", text="ran " + params.name)])


app = Server("any-name", on_list_tools=list_tools, on_call_tool=call_tool)
'''
ALICE, CI_BOT, MALLORY = "alice-0123456789abcdef", "ci-bot-0123456789abcdef", "mallory-0123456789abcdef"


async def seen_by(url: str, secret: str) -> tuple:
    """(the tools listed, what calling git_push comes back with) for the caller with this token."""
    from fastmcp import Client
    from fastmcp.client.transports import StreamableHttpTransport

    async with Client(StreamableHttpTransport(url, auth=secret)) as client:
        names = sorted(tool.name for tool in await client.list_tools())
        pushed = await client.call_tool("git_push", {}, raise_on_error=False)
    return names, answer_text(pushed)


def test_each_caller_is_offered_the_tools_the_policy_file_gives_it_and_sighup_reads_it_again(token, tmp_path):
    import signal

    from helpers import wait_for

    shutil.copy(SERVERS / "git_tools.py", tmp_path / "git.py")
    (tmp_path / "policy").write_text(POLICY)
    (tmp_path / "tokens").write_text(f"alice {ALICE}\nci-bot {CI_BOT}\nmallory {MALLORY}\n")
    (tmp_path / "tokens").chmod(0o600)
    unknown = (True, "Unknown tool: 'git_push'")
    with serving(token, "git.py", "--auth-token-file", "tokens", "--policy", "policy", cwd=tmp_path) as server:
        see = lambda secret: asyncio.run(asyncio.wait_for(seen_by(server.url, secret), 60))  # noqa: E731
        assert see(ALICE) == (["git_commit", "git_push", "git_status"], (False, "pushed"))
        assert see(CI_BOT) == (["git_commit", "git_status"], unknown)
        assert see(MALLORY) == (["git_status"], unknown)  # no line names mallory: the '*' line's
        (tmp_path / "policy").write_text("alice git_status\nmallory git_*\n")
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: any("SIGHUP: reloaded" in line for line in server.lines), what="the reload")
        assert see(ALICE) == (["git_status"], unknown)
        assert see(MALLORY) == (["git_commit", "git_push", "git_status"], (False, "pushed"))
        assert see(CI_BOT) == ([], unknown)
    assert "mcprun: SIGHUP: reloaded 3 tokens from tokens and the policy policy" in server.stderr


def test_the_policy_file_over_stdio_offers_the_star_line(token, tmp_path):
    shutil.copy(SERVERS / "git_tools.py", tmp_path / "git.py")
    (tmp_path / "policy").write_text(POLICY)
    seen = asyncio.run(asyncio.wait_for(look(stdio_transport(token, "git.py", "--policy", "policy", cwd=tmp_path),
                                             "git_push", "git_status"), 90))
    assert seen["names"] == ["git_status"] and seen["denied"] == seen["unknown"], seen


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_a_server_that_runs_any_name_is_never_asked_for_a_tool_left_out(token, tmp_path, transport):
    (tmp_path / "any.py").write_text(ANY_NAME_SERVER)
    if transport == "stdio":
        seen = asyncio.run(asyncio.wait_for(look(stdio_transport(token, "any.py", "--exclude-tools", "drop_*",
                                                                 cwd=tmp_path), "drop_table", "-"), 90))
        assert seen["denied"] == (True, "Unknown tool: drop_table"), seen
    else:
        with serving(token, "any.py", "--exclude-tools", "drop_*", cwd=tmp_path) as server:
            seen = asyncio.run(asyncio.wait_for(look(server.url, "drop_table", "-"), 90))
        assert seen["denied"] == (True, "Unknown tool: drop_table"), seen
        assert "ran not-offered-" in server.stderr and "ran drop_table" not in server.stderr  # the stand-in only
    assert seen["names"] == []


def test_check_lists_the_tools_of_each_caller(token, tmp_path):
    shutil.copy(SERVERS / "git_tools.py", tmp_path / "git.py")
    (tmp_path / "policy").write_text(POLICY)
    result = run_cli(token, "check", "git.py", "--policy", "policy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("tools per caller (--policy):\n")[1] == (
        "  alice        git_status, git_commit, git_push\n"
        "  ci-bot       git_status, git_commit\n"
        "  scope:write  git_status, git_commit\n"
        "  *            git_status\n")
    report = json.loads(run_cli(token, "check", "git.py", "--policy", "policy", "--json", cwd=tmp_path).stdout)
    assert report["policy"]["ci-bot"] == ["git_status", "git_commit"]
    assert [tool["name"] for tool in report["tools"]] == ["git_status", "git_commit", "git_push"]


def test_the_policy_holds_through_an_mcp_json_proxy_and_a_module_that_starts_its_own_server(token, tmp_path):
    from helpers import TOKEN_VARIABLE, mcprun_command

    command = mcprun_command()
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"local": {
        "command": command[0], "args": [*command[1:], str(SERVERS / "fastmcp_server.py"), "--no-banner"],
        "env": {TOKEN_VARIABLE: token}}}}))
    through_config = asyncio.run(asyncio.wait_for(look(stdio_transport(token, str(config), "--exclude-tools", "*echo",
                                                                       cwd=tmp_path), "echo", "argv"), 90))
    assert through_config["names"] == ["argv"], through_config  # one server: its names unprefixed
    assert through_config["denied"] == through_config["unknown"] and through_config["denied"][0], through_config
    started_itself = asyncio.run(asyncio.wait_for(look(stdio_transport(token, "-m", "runnable_module", "--exclude-tools",
                                                                       "echo", cwd=SERVERS), "echo", "argv"), 90))
    assert started_itself["names"] == ["argv"] and started_itself["denied"] == started_itself["unknown"], started_itself
