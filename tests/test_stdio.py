"""stdio hygiene: only protocol messages reach stdout, whatever the server prints."""

import json
import subprocess

import pytest
from helpers import (
    INITIALIZE, INITIALIZED, ROOT, SERVERS, child_env, exercise_fastmcp, mcprun_command, run_async, stdio_exchange,
    stdio_transport, tools_call,
)

MCP1_PYTHON = ROOT / ".venv-mcp1" / "bin" / "python"
PRINTS = ("print in the lifespan, at start", "print inside a tool call", "print in the lifespan, at stop")


def buffered_env(token: str) -> dict:
    """A client's environment: no PYTHONUNBUFFERED, so the server's stdout is block-buffered, as MCP clients start it."""
    env = child_env(token)
    env.pop("PYTHONUNBUFFERED", None)
    return env


def test_prints_at_import_and_in_tools_go_to_stderr(token):
    result = stdio_exchange(
        [*mcprun_command(), "noisy.py"],
        [INITIALIZE, INITIALIZED, tools_call(2, "shout", {"text": "quiet"})],
        token, cwd=SERVERS,
    )
    assert result.returncode == 0, result.stderr
    messages = [json.loads(line) for line in result.stdout.splitlines()]  # every line is JSON
    assert [m.get("id") for m in messages] == [1, 2]
    assert messages[1]["result"]["content"][0]["text"] == "QUIET"
    for noise in ("noise at import time", "raw fd noise at import time", "child process noise",
                  "noise inside a tool", "raw fd noise inside a tool"):
        assert noise in result.stderr
        assert noise not in result.stdout


def test_noisy_server_through_a_real_client(token):
    result = run_async(exercise_fastmcp(stdio_transport(token, "noisy.py", cwd=SERVERS)))
    assert result["echo"] == "hi"


def test_end_of_input_exits_cleanly(token):
    result = stdio_exchange([*mcprun_command(), "fastmcp_server.py"], [], token, cwd=SERVERS, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_banner_goes_to_stderr_and_no_banner_removes_it(token):
    command = [*mcprun_command(), "fastmcp_server.py"]
    shown = stdio_exchange(command, [INITIALIZE], token, cwd=SERVERS)
    assert "mcprun: serving 'Demo' from fastmcp_server.py over stdio" in shown.stderr
    hidden = stdio_exchange([*command, "--no-banner"], [INITIALIZE], token, cwd=SERVERS)
    assert "mcprun: serving" not in hidden.stderr
    assert json.loads(hidden.stdout)["id"] == 1


def test_buffered_prints_never_reach_the_wire(token):
    # a print that sits in the buffer until exit reached the client once the SDK gave fd 1 back to the wire
    result = stdio_exchange([*mcprun_command(), "printer.py"],
                            [INITIALIZE, INITIALIZED, tools_call(2, "shout", {"text": "a"}),
                             tools_call(3, "shout", {"text": "b"})], token, cwd=SERVERS, env=buffered_env(token))
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == [1, 2, 3]  # every line is protocol
    for printed in PRINTS:
        assert printed in result.stderr


@pytest.mark.skipif(not MCP1_PYTHON.exists(), reason="run './build test' to create .venv-mcp1")
def test_mcp1_client_over_stdio_with_a_tool_that_prints(token):
    calls = [["shout", {"text": "first"}], ["echo", {"text": "x"}], ["shout", {"text": "second"}]]
    result = subprocess.run([str(MCP1_PYTHON), str(ROOT / "tests" / "clients" / "mcp1_client.py"), "session",
                             "stdio", json.dumps(calls), *mcprun_command(), "printer.py"], cwd=SERVERS,
                            env=buffered_env(token), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Failed to parse JSONRPC message" not in result.stderr
    assert json.loads(result.stdout)["results"] == [{"text": "FIRST", "error": False}, {"text": "x", "error": False},
                                                    {"text": "SECOND", "error": False}]


def test_session_state_kept_between_calls(token):
    """fastmcp's state store, imported before serving with its beartype rewrite skipped, keeps a session's state."""
    result = stdio_exchange(
        [*mcprun_command(), "session_state.py"],
        [INITIALIZE, INITIALIZED, tools_call(2, "recall", {}), tools_call(3, "remember", {"value": "kept value"}),
         tools_call(4, "recall", {})],
        token, cwd=SERVERS,
    )
    assert result.returncode == 0, result.stderr
    texts = {m["id"]: m["result"]["content"][0]["text"] for m in map(json.loads, result.stdout.splitlines())
             if m.get("id") != 1}
    assert texts == {2: "nothing", 3: "kept", 4: "kept value"}
    assert "beartype" not in result.stderr.lower()  # no warning from the checks that are off
