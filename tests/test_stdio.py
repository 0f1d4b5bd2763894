"""stdio hygiene: only protocol messages reach stdout, whatever the server prints."""

import json

from conftest import (
    INITIALIZE, INITIALIZED, SERVERS, exercise_fastmcp, mcprun_command, run_async, stdio_exchange,
    stdio_transport, tools_call,
)


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
