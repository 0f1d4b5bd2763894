"""Clients of an older generation: the mcp 1.x SDK client, in its own venv, against mcprun."""

import json
import subprocess

import pytest
from helpers import DEMO_RESULT, ROOT, SERVERS, child_env, mcprun_command, serving

MCP1_PYTHON = ROOT / ".venv-mcp1" / "bin" / "python"
CLIENT = ROOT / "tests" / "clients" / "mcp1_client.py"
EXPECTED = {key: value for key, value in DEMO_RESULT.items() if key != "argv"}
pytestmark = pytest.mark.skipif(not MCP1_PYTHON.exists(), reason="run './build test' to create .venv-mcp1")


def mcp1_client(token, *args) -> dict:
    result = subprocess.run([str(MCP1_PYTHON), str(CLIENT), *args], capture_output=True, text=True,
                            env=child_env(token), cwd=SERVERS, timeout=90)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_mcp1_version_is_old(token):
    result = subprocess.run([str(MCP1_PYTHON), "-c", "import importlib.metadata as m; print(m.version('mcp'))"],
                            capture_output=True, text=True, timeout=30)
    assert result.stdout.startswith("1.")


@pytest.mark.parametrize("spec", ["fastmcp_server.py", "sdk_server.py"])
def test_mcp1_client_over_stdio(token, spec):
    assert mcp1_client(token, "stdio", *mcprun_command(), spec) == EXPECTED


@pytest.mark.parametrize("transport", ["http", "sse"])
@pytest.mark.parametrize("spec", ["fastmcp_server.py", "sdk_server.py"])
def test_mcp1_client_over_http(token, spec, transport):
    with serving(token, spec, transport=transport, cwd=SERVERS) as server:
        assert mcp1_client(token, transport, server.url) == EXPECTED
