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


def written_at_once(command: list[str], messages: list, token: str, timeout: float = 60) -> tuple:
    """Write every message, close stdin at once, as a pipe or a script does; return (answers by id, stderr, code)."""
    result = subprocess.run(command, input="".join(json.dumps(m) + "\n" for m in messages), capture_output=True,
                            text=True, cwd=SERVERS, env=child_env(token), timeout=timeout)
    answers = {m["id"]: m for m in map(json.loads, result.stdout.splitlines()) if "id" in m}
    return answers, result.stderr, result.returncode


@pytest.mark.parametrize("spec", ["production_server.py", "slow_sdk_server.py"])
def test_requests_written_before_stdin_closes_are_answered(token, spec):
    # the SDK cancels whatever is in flight at the end of its input: the answers were lost
    answers, stderr, code = written_at_once([*mcprun_command(), spec], [
        INITIALIZE, INITIALIZED, tools_call(2, "slow", {"seconds": 1.5}),
        {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}], token)
    assert code == 0, stderr
    assert sorted(answers) == [1, 2, 3]
    assert "slept 1.5" in answers[2]["result"]["content"][0]["text"]
    assert "slow" in [tool["name"] for tool in answers[3]["result"]["tools"]]
    assert "unanswered" not in stderr


def test_a_request_unanswered_after_the_grace_is_cancelled_with_one_warning(token):
    answers, stderr, code = written_at_once([*mcprun_command(), "production_server.py", "--graceful-timeout", "1"], [
        INITIALIZE, INITIALIZED, tools_call(2, "hang", {}), tools_call(3, "echo", {"text": "quick"})], token)
    assert code == 0, stderr
    assert sorted(answers) == [1, 2, 3]
    assert answers[3]["result"]["content"][0]["text"].startswith("quick")
    assert answers[2]["error"]["message"] == "Connection closed"  # the SDK's answer to what it cancels at the end
    assert "mcprun: warning: stdin closed with 1 request(s) unanswered after 1 s (--graceful-timeout): cancelled" \
        in stderr.splitlines()


def test_a_request_the_client_cancelled_needs_no_answer_at_the_end(token):
    # with a 300 s grace, the end would wait past the test's timeout if the cancelled call were still awaited
    answers, stderr, code = written_at_once(
        [*mcprun_command(), "production_server.py", "--graceful-timeout", "300"],
        [INITIALIZE, INITIALIZED, tools_call(2, "hang", {}),
         {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 2}}], token, timeout=60)
    assert code == 0, stderr
    assert 1 in answers and "unanswered" not in stderr


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
