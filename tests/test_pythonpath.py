"""--pythonpath DIR / MCPRUN_PYTHONPATH: extra packages a server imports, searched after the bundle."""

import json
import re
import shutil
import sys

import pytest
from helpers import (
    INITIALIZE, INITIALIZED, ROOT, SERVERS, child_env, mcprun_command, run_cli, stdio_exchange, tools_call,
)

THIRD_PARTY = ROOT / "build-cache" / "third-party"
EXCHANGE = [INITIALIZE, INITIALIZED, tools_call(2, "echo", {"text": "found"})]


def served(result) -> str:
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()][-1]["result"]["content"][0]["text"]


@pytest.fixture
def server_needing_a_package(tmp_path):
    """A server importing 'extra_pkg', which only a --pythonpath folder provides."""
    (tmp_path / "vendor" / "extra_pkg").mkdir(parents=True)
    (tmp_path / "vendor" / "extra_pkg" / "__init__.py").write_text("PREFIX = ''\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "server.py").write_text(
        "from extra_pkg import PREFIX\nfrom fastmcp import FastMCP\n\nmcp = FastMCP('Needs')\n\n\n"
        "@mcp.tool\ndef echo(text: str) -> str:\n    return PREFIX + text\n")
    return tmp_path


def test_missing_package_error_says_how_to_vendor_it(token, server_needing_a_package):
    result = run_cli(token, "app/server.py", cwd=server_needing_a_package)
    assert result.returncode == 1
    assert result.stderr.startswith("mcprun: error: app/server.py imports 'extra_pkg', which is not installed")
    assert "run 'mcprun vendor PACKAGE --python-version 3." in result.stderr
    assert "--pythonpath DIR" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_pythonpath_supplies_the_package(token, server_needing_a_package, how):
    folder = str(server_needing_a_package / "vendor")
    args, env = (["--pythonpath", folder], child_env(token)) if how == "flag" else (
        [], child_env(token, MCPRUN_PYTHONPATH=folder))
    result = stdio_exchange([*mcprun_command(), "app/server.py", *args], EXCHANGE, token,
                            cwd=server_needing_a_package, env=env)
    assert served(result) == "found"


def test_pythonpath_cannot_shadow_the_bundle(token, server_needing_a_package):
    impostor = server_needing_a_package / "vendor" / "fastmcp"
    impostor.mkdir()
    (impostor / "__init__.py").write_text("raise ImportError('impostor fastmcp from --pythonpath')\n")
    result = stdio_exchange([*mcprun_command(), "app/server.py", "--pythonpath", "vendor"], EXCHANGE, token,
                            cwd=server_needing_a_package)
    assert served(result) == "found"


def test_pythonpath_compiled_for_another_python_is_named(token, server_needing_a_package):
    (server_needing_a_package / "vendor" / "extra_pkg" / "_speedups.cpython-39-x86_64-linux-gnu.so").write_bytes(b"")
    result = stdio_exchange([*mcprun_command(), "app/server.py", "--pythonpath", "vendor"], EXCHANGE, token,
                            cwd=server_needing_a_package)
    assert served(result) == "found"
    python = "%d.%d" % sys.version_info[:2]  # the suite's Python is the artifacts' (the build makes both)
    warning = next(line for line in result.stderr.splitlines() if line.startswith("mcprun: warning: --pythonpath"))
    assert re.fullmatch(
        r"mcprun: warning: --pythonpath vendor holds modules compiled for CPython 3\.9 \(e\.g\. "
        r"_speedups\.cpython-39-x86_64-linux-gnu\.so\), but mcprun runs " + re.escape(python) + r"\.\d+: make it again "
        r"for this Python; on a connected machine run 'mcprun vendor \.\.\. --python-version " + re.escape(python) +
        r" -o DIR', then add --pythonpath DIR", warning), warning


def test_pythonpath_must_be_a_folder(token):
    result = run_cli(token, "fastmcp_server.py", "--pythonpath", "no/such/folder", cwd=SERVERS)
    assert result.returncode == 2
    assert result.stderr.startswith("mcprun: error: --pythonpath ")
    assert result.stderr.endswith("no/such/folder: no such folder\n")


@pytest.mark.skipif(not (THIRD_PARTY / "bs4").exists(), reason="run './build test' to install the third-party server")
def test_third_party_server_copied_away_from_its_dependencies(token, tmp_path):
    shutil.copytree(THIRD_PARTY / "duckduckgo_mcp_server", tmp_path / "duckduckgo_mcp_server")
    command = [*mcprun_command(), "duckduckgo_mcp_server/server.py:mcp", "--pythonpath", str(THIRD_PARTY)]
    result = stdio_exchange(command, [INITIALIZE, INITIALIZED, tools_call(2, "expand_link", {"token": "x"})],
                            token, cwd=tmp_path)
    assert served(result).startswith("Error: Unknown link reference 'x'")
