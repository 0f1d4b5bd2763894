"""What a server declares it needs, checked offline before it runs, and 'mcprun check', the preflight."""

from __future__ import annotations

import json

import pytest
from helpers import (INITIALIZE, INITIALIZED, SERVERS, child_env, error_line, mcprun_command, run_cli, stdio_exchange,
                      tools_call)

COMPAT = SERVERS / "compat"
PEP723 = '''# /// script
# requires-python = ">=3.10"
# dependencies = [{dependencies}]
# ///
from fastmcp import FastMCP

mcp = FastMCP("Declares")


@mcp.tool
def hello() -> str:
    return "hello"
'''


def server_declaring(folder, *dependencies: str):
    path = folder / "declares.py"
    path.write_text(PEP723.format(dependencies=", ".join(json.dumps(d) for d in dependencies)))
    return path


def fake_package(folder, name: str, version: str):
    """A folder holding an installed distribution, as 'pip install --target' leaves it."""
    (folder / name).mkdir(parents=True)
    (folder / name / "__init__.py").write_text("")
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir()
    info.joinpath("METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return folder


def test_satisfied_script_metadata_serves(token, tmp_path):
    server = server_declaring(tmp_path, "httpx>=0.20", "pydantic>=2", "tzdata; python_version < '3'")
    result = run_cli(token, str(server), input="")
    assert result.returncode == 0, result.stderr


def test_unmet_script_metadata_is_one_error_with_the_vendoring_command(token, tmp_path):
    server = server_declaring(tmp_path, "nosuchpkg-xyz==1.0", "pydantic<2", "httpx>=0.20")
    line = error_line(result := run_cli(token, str(server), cwd=tmp_path, input=""), 1)
    assert result.returncode == 1
    assert line.startswith("mcprun: error: declares.py needs what this mcprun does not have: ")
    assert "nosuchpkg-xyz==1.0 (not installed; declares.py (# /// script))" in line
    assert "pydantic<2 (have 2." in line and "in the bundle, which --pythonpath cannot replace" in line
    assert "httpx" not in line.split("mcprun vendor")[0]  # met
    assert ("on a connected machine run 'mcprun vendor declares.py --with \"nosuchpkg-xyz==1.0\" --python-version "
            "3.11 -o DIR', then add --pythonpath DIR" in line)
    assert line.endswith("or start anyway with --skip-env")
    assert run_cli(token, str(server), "--skip-env", cwd=tmp_path, input="").returncode == 0


def test_pythonpath_folders_satisfy_requirements(token, tmp_path):
    folder = fake_package(tmp_path / "vendor", "fakepkg", "1.2")
    server = server_declaring(tmp_path, "fakepkg>=1")
    assert run_cli(token, str(server), input="").returncode == 1
    assert run_cli(token, str(server), "--pythonpath", str(folder), input="").returncode == 0
    too_old = run_cli(token, str(server), "--pythonpath", str(folder), "--with", "fakepkg>=2", input="")
    line = error_line(too_old, 1)
    assert "fakepkg>=2 (have 1.2; --with)" in line and "in the bundle" not in line


@pytest.mark.parametrize("args, files, fragment", [
    (["--with", "nosuchpkg-xyz"], {}, "nosuchpkg-xyz (not installed; --with)"),
    (["--with-requirements", "reqs.txt"], {"reqs.txt": "# pinned\nhttpx>=0.20\nnosuchpkg-abc>=1 # comment\n"},
     "nosuchpkg-abc>=1 (not installed; --with-requirements (reqs.txt))"),
    (["--project", "proj"], {"proj/pyproject.toml": '[project]\nname = "p"\ndependencies = ["nosuchpkg-def"]\n'},
     "nosuchpkg-def (not installed; --project (proj/pyproject.toml))"),
    (["--python", "3.99"], {}, "Python 3.99 (this is 3."),
    (["--python", "<3"], {}, "Python <3 (this is 3."),
])
def test_command_line_requirements(token, tmp_path, args, files, fragment):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    result = run_cli(token, str(SERVERS / "fastmcp_server.py"), *args, cwd=tmp_path, input="")
    assert result.returncode == 1
    assert fragment in error_line(result, 1)


def test_dependencies_declared_by_an_mcp1_server(token, tmp_path):
    server = tmp_path / "old.py"
    server.write_text("from mcp.server.fastmcp import FastMCP\n\n"
                      "mcp = FastMCP('Old', dependencies=['nosuchpkg-ghi', 'httpx'])\n")
    line = error_line(result := run_cli(token, str(server), cwd=tmp_path, input=""), 1)
    assert result.returncode == 1
    assert "nosuchpkg-ghi (not installed; FastMCP('Old', dependencies=...))" in line


def test_requirements_on_older_stacks_are_served_through_the_mappings(token, tmp_path):
    server = server_declaring(tmp_path, "mcp<2", "fastmcp>=2,<3")
    assert run_cli(token, str(server), input="").returncode == 0
    assert "mcp<2 (have 2." in error_line(run_cli(token, str(server), "--no-compat", input=""), 1)


# -- mcprun check ----------------------------------------------------------------------------


@pytest.mark.parametrize("spec, name, path, tools", [
    ("fastmcp_server.py", "Demo", "fastmcp 4 FastMCP", ["argv", "echo"]),
    ("sdk_server.py", "Demo", "mcp 2.x MCPServer", ["argv", "echo"]),
    ("compat/mcp1_full.py", "Legacy", "mcp 1.x FastMCP, mapped onto mcp 2.x MCPServer",
     ["echo", "pixel", "refuse", "work"]),
    ("compat/lowlevel_object.py", "lowlevel-calc", "low-level mcp Server", ["add", "boom"]),
    ("named_objects.py:create_server", None, "fastmcp 4 FastMCP", None),
])
def test_check_a_good_server(token, spec, name, path, tools):
    result = run_cli(token, "check", spec, "--json", cwd=SERVERS)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["path"] == path
    if name:
        assert report["name"] == name
    if tools:
        assert sorted(tool["name"] for tool in report["tools"]) == tools
    text = run_cli(token, "check", spec, cwd=SERVERS)
    assert text.returncode == 0
    assert text.stdout.startswith("mcprun check: ok, it would serve\n")
    assert f"path:     {path}\n" in text.stdout


def test_check_text_lists_components_with_descriptions(token):
    result = run_cli(token, "check", "compat/mcp1_full.py", cwd=SERVERS)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "server:   'Legacy'" in out
    assert "requires: httpx>=0.27" in out
    assert "tools (4):\n  echo    Return the text unchanged.\n" in out
    assert "resource templates (1):\n  users://{user_id}/profile" in out
    assert "prompts (2):\n  summarize" in out


@pytest.mark.parametrize("spec, fragment", [
    ("nope.py", "nope.py: no such file"),
    ("broken/syntax_error.py", "syntax error in broken/syntax_error.py"),
    ("configs/with_environment.json", "pandas>=2 (not installed; configs/with_environment.json)"),
])
def test_check_a_broken_server(token, spec, fragment):
    result = run_cli(token, "check", spec, "--json", cwd=SERVERS)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and fragment in report["error"]
    assert fragment in error_line(result, 1, report=True)
    text = run_cli(token, "check", spec, cwd=SERVERS)
    assert text.returncode == 1
    assert text.stdout.startswith("mcprun check: it would not serve\n")


def test_json_without_check_is_a_usage_error(token):
    result = run_cli(token, "fastmcp_server.py", "--json", cwd=SERVERS)
    assert result.returncode == 2
    assert result.stderr == "mcprun: error: --json goes with 'mcprun check'\n"


# -- --allow-network: uv fetches what the command line names, never implicitly ------------------

UV_SERVER = '''import tabulate
from fastmcp import FastMCP

mcp = FastMCP("Fetched")


@mcp.tool
def table() -> str:
    return tabulate.tabulate([[1, 2]], tablefmt="plain")
'''


def path_with(folder) -> str:
    import os

    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def marking_uv(tmp_path):
    """A fake uv that leaves a mark if anything runs it."""
    folder = tmp_path / "fake-bin"
    folder.mkdir()
    (folder / "uv").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'uv-ran'}\nexit 1\n")
    (folder / "uv").chmod(0o755)
    return folder


def test_uv_is_never_run_without_allow_network(token, tmp_path):
    (tmp_path / "server.py").write_text(UV_SERVER)
    env = child_env(token, PATH=path_with(marking_uv(tmp_path)), XDG_CACHE_HOME=str(tmp_path / "cache"))
    result = run_cli(token, "server.py", "--with", "tabulate", cwd=tmp_path, env=env, input="")
    assert result.returncode == 1
    assert "tabulate (not installed; --with)" in error_line(result, 1)
    assert not (tmp_path / "uv-ran").exists()
    assert not list((tmp_path / "cache").glob("mcprun/uv-*"))  # (the binary unpacks itself there; uv's folder: none)


def test_allow_network_lets_uv_fetch_what_with_names(token, tmp_path):
    import shutil
    import sys
    from pathlib import Path

    uv = Path(sys.executable).parent / "uv"
    if not uv.exists() and not shutil.which("uv"):
        pytest.skip("uv is not installed (packaging/test-requirements.lock has it)")
    (tmp_path / "server.py").write_text(UV_SERVER)
    env = child_env(token, PATH=path_with(uv.parent), XDG_CACHE_HOME=str(tmp_path / "cache"))
    exchange = [INITIALIZE, INITIALIZED, tools_call(2, "table", {})]
    command = [*mcprun_command(), "server.py", "--with", "tabulate>=0.9", "--allow-network"]
    first = stdio_exchange(command, exchange, token, cwd=tmp_path, env=env, timeout=300)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.splitlines()[-1])["result"]["content"][0]["text"] == "1  2"
    assert "mcprun: --allow-network: uv is fetching tabulate>=0.9 into " in first.stderr
    again = stdio_exchange(command, exchange, token, cwd=tmp_path, env=env)  # from the cache: nothing fetched
    assert again.returncode == 0 and "uv is fetching" not in again.stderr


def test_allow_network_without_uv_is_the_offline_check(token, tmp_path):
    (tmp_path / "server.py").write_text(UV_SERVER)
    env = child_env(token, PATH="/usr/bin:/bin", XDG_CACHE_HOME=str(tmp_path / "cache"))
    result = run_cli(token, "server.py", "--with", "tabulate", "--allow-network", cwd=tmp_path, env=env, input="")
    assert result.returncode == 1
    assert "tabulate (not installed; --with)" in error_line(result, 1)


def test_uv_failure_is_one_error_line(token, tmp_path):
    (tmp_path / "server.py").write_text(UV_SERVER)
    env = child_env(token, PATH=path_with(marking_uv(tmp_path)), XDG_CACHE_HOME=str(tmp_path / "cache"))
    result = run_cli(token, "server.py", "--with", "tabulate", "--allow-network", cwd=tmp_path, env=env, input="")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("mcprun: --allow-network: uv is fetching tabulate into ")
    assert lines[1:] == ["mcprun: error: uv could not fetch tabulate: uv exited with 1"]
    assert (tmp_path / "uv-ran").read_text().startswith("pip install --quiet --target ")
