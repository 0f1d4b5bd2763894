"""Real MCP servers from PyPI, by name and offline, as a new user runs them.

Each server of packaging/corpus.lock is vendored on the connected side ('mcprun vendor NAME==VERSION',
the real package index, the user's own pip), then checked and served by its console-script name
inside a network namespace with no way out ('unshare --net'): over stdio, streamable HTTP and SSE,
through fastmcp's Client and the mcp 1.x SDK's ClientSession (tests/clients/corpus_probe.py). Its
tools must equal those of its own native run (tests/corpus/native_tools.json, recorded once by
tests/corpus/record_native.py), and one call each must give the right result, offline: git_log on a
repository made here, a fetch of a page served on the namespace's loopback, a duckdb query, a
workbook and a document written and read back, a file converted to markdown, a shell command.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, child_env, mcprun_command, run_cli, under_test_runs_on

NATIVE = json.loads((ROOT / "tests" / "corpus" / "native_tools.json").read_text())
LOCK = {found[1]: (found[2], found[3]) for found in re.finditer(
    r"^([A-Za-z0-9_.-]+)==(\S+) \\\n\s+--hash=sha256:([0-9a-f]{64})", (ROOT / "packaging" / "corpus.lock").read_text(),
    re.M)}
PROBE = ROOT / "tests" / "clients" / "corpus_probe.py"
MCP1_PYTHON = ROOT / ".venv-mcp1" / "bin" / "python"
pytestmark = [pytest.mark.skipif(not shutil.which("unshare"), reason="unshare not installed"),
              pytest.mark.skipif(not MCP1_PYTHON.exists(), reason="run './build test' to create .venv-mcp1")]


@dataclasses.dataclass(frozen=True)
class Server:
    """How a corpus server is started (its console script's arguments, environment) and proven to work: calls,
    the last of which must answer with expected in its text. {work} is a folder made for it, {client} the
    client's name, {transport} the transport, {page} the URL of a page on loopback."""

    package: str
    calls: list
    expected: str
    args: tuple = ()
    env: dict = dataclasses.field(default_factory=dict)

    @property
    def script(self) -> str:
        return NATIVE[self.package]["script"]


CORPUS = [
    Server("mcp-server-git", [["git_log", {"repo_path": "{work}/repo", "max_count": 1}]],
           "Message: Second commit, made offline", ("--repository", "{work}/repo")),
    # readabilipy (which it uses) runs 'npm install' at its first page when node and npm are on PATH, and raises
    # when npm fails, as it must offline (docs/air-gap.md): this air-gapped machine has no node, as most have not
    Server("mcp-server-fetch", [["fetch", {"url": "{page}"}]], "Hello from a page on loopback.",
           ("--allow-private-ips",), {"PATH": "{path without node}"}),
    Server("mcp-server-time", [["convert_time", {"source_timezone": "UTC", "time": "12:00",
                                                 "target_timezone": "Asia/Tokyo"}]],
           '"time_difference": "+9.0h"', ("--local-timezone", "UTC")),
    Server("mcp-server-duckdb", [["query", {"query": "SELECT 6 * 7 AS answer"}]], "[(42,)]",
           ("--db-path", "{work}/numbers.duckdb")),
    Server("excel-mcp-server", [["create_workbook", {"path": "{client}-{transport}.xlsx"}],
                                ["write_range", {"path": "{client}-{transport}.xlsx", "sheet": "Sheet1", "at": "A1",
                                                 "rows": [["fruit", "qty"], ["pear", 5]]}],
                                ["read_range", {"path": "{client}-{transport}.xlsx", "sheet": "Sheet1", "range": "A1:B2"}]],
           '"values":[["fruit","qty"],["pear",5]]', ("stdio", "--allow-dir", "{work}")),
    Server("office-word-mcp-server", [["create_document", {"filename": "{work}/{client}-{transport}.docx"}],
                                      ["add_paragraph", {"filename": "{work}/{client}-{transport}.docx",
                                                         "text": "Written offline by mcprun."}],
                                      ["get_document_text", {"filename": "{work}/{client}-{transport}.docx"}]],
           "Written offline by mcprun."),
    Server("markitdown-mcp", [["convert_to_markdown", {"uri": "file://{work}/page/index.html"}]],
           "# A page on loopback"),
    Server("cli-mcp-server", [["run_command", {"command": "cat hello.txt"}]], "hello from a file",
           env={"ALLOWED_DIR": "{work}"}),
]


def vendor_env(token: str) -> dict:
    """The test venv's python (it has pip) first on PATH: vendor runs pip from PATH when it is a binary."""
    return child_env(token, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


def make_work(folder: Path) -> None:
    """What the calls work on: a git repository, a page, a file."""
    (folder / "page").mkdir()
    (folder / "page" / "index.html").write_text("<html><head><title>Loopback</title></head><body><h1>A page on "
                                                "loopback</h1><p>Hello from a page on loopback.</p></body></html>")
    (folder / "hello.txt").write_text("hello from a file\n")
    git = {"GIT_AUTHOR_NAME": "mcprun", "GIT_AUTHOR_EMAIL": "tests@mcprun", "GIT_COMMITTER_NAME": "mcprun",
           "GIT_COMMITTER_EMAIL": "tests@mcprun", "GIT_AUTHOR_DATE": "2026-01-02T12:00:00Z",
           "GIT_COMMITTER_DATE": "2026-01-02T12:00:00Z", "PATH": os.environ["PATH"], "HOME": str(folder)}
    for command in (["init", "-q", "repo"], ["-C", "repo", "commit", "-q", "--allow-empty", "-m", "First commit"],
                    ["-C", "repo", "commit", "-q", "--allow-empty", "-m", "Second commit, made offline"]):
        subprocess.run(["git", *command], cwd=folder, env=git, check=True, capture_output=True, timeout=60)


def path_without_node(where: Path) -> str:
    """This PATH as on a machine without Node.js: each folder holding node is replaced by one of links to the rest
    of its programs."""
    folders = []
    for n, folder in enumerate(os.environ["PATH"].split(os.pathsep)):
        if Path(folder, "node").exists():
            copy = where / str(n)
            if not copy.exists():
                copy.mkdir(parents=True)
                for program in Path(folder).iterdir():
                    if program.name not in ("node", "nodejs", "npm", "npx", "corepack"):
                        (copy / program.name).symlink_to(program)
            folder = str(copy)
        folders.append(folder)
    return os.pathsep.join(folders)


@dataclasses.dataclass(frozen=True)
class Vendored:
    server: Server
    deps: Path
    work: Path
    said: str  # vendor's summary line

    def fill(self, value: str) -> str:
        if value == "{path without node}":
            return path_without_node(self.work / "path")
        return value.replace("{work}", str(self.work))

    def command(self, *mcprun_args: str) -> list[str]:
        """The mcprun command that serves the server by its console-script name."""
        return [*mcprun_command(), *mcprun_args, self.server.script, "--pythonpath", str(self.deps), "--",
                *map(self.fill, self.server.args)]

    def env(self, token: str) -> dict:
        return child_env(token, **{name: self.fill(value) for name, value in self.server.env.items()})


# MCPRUN_TEST_CORPUS (comma-separated packages) runs only those: ./build gives each artifact half of them
CHOSEN = [server for server in CORPUS
          if server.package in os.environ.get("MCPRUN_TEST_CORPUS", server.package).split(",")]


@pytest.fixture(scope="module", params=[pytest.param(server, id=server.package,
                                                     marks=pytest.mark.xdist_group(server.package))
                                        for server in CHOSEN])
def vendored(request, tmp_path_factory) -> Vendored:
    """The server's package vendored for this mcprun, once per server (the index is reached here only)."""
    import uuid

    server, token = request.param, uuid.uuid4().hex
    folder = tmp_path_factory.mktemp(server.package)
    version, _ = LOCK[server.package]
    result = run_cli(token, "vendor", f"{server.package}=={version}", "-o", str(folder / "deps"), cwd=folder,
                     env=vendor_env(token), timeout=900)
    assert result.returncode == 0, result.stderr
    (folder / "work").mkdir()
    make_work(folder / "work")
    return Vendored(server, folder / "deps", folder / "work", result.stderr)


def test_vendor_resolves_the_pinned_release(vendored):
    package = vendored.server.package
    version, digest = LOCK[package]
    assert re.match(rf"mcprun: vendored {re.escape(package)} {re.escape(version)} (and \d+ packages? it needs \(.*\) )?into ",
                    vendored.said), vendored.said
    machine = under_test_runs_on()[1]
    assert re.search(rf" into \S+ for CPython 3\.1\d on manylinux_2_28_{machine}", vendored.said), vendored.said
    manifest = {line.split()[0]: line.split() for line in (vendored.deps / "MANIFEST").read_text().splitlines()[3:]}
    assert manifest[package][1:3] == [version, f"sha256={digest}"]
    assert not {"mcp", "fastmcp", "pydantic", "httpx"} & {name.lower() for name in manifest}  # the bundle's own
    if package == "mcp-server-fetch":  # the python3 that runs the zipapp has requests: it is not the bundle's
        assert "requests" in manifest
    assert (vendored.deps / "bin" / vendored.server.script).is_file()


def test_check_by_name_offline_lists_the_native_tools(token, vendored):
    result = subprocess.run(["unshare", "--net", *vendored.command("check", "--json")], cwd=vendored.work,
                            env=vendored.env(token), capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert sorted(tool["name"] for tool in report["tools"]) == NATIVE[vendored.server.package]["tools"]
    assert f"started by console script {vendored.server.script} " in report["path"]


@pytest.mark.parametrize("transport", ["stdio", "http", "sse"])
def test_served_by_name_offline_through_two_clients(token, vendored, transport):
    calls = json.loads(vendored.fill(json.dumps(vendored.server.calls)).replace("{transport}", transport))
    result = subprocess.run(["unshare", "--net", sys.executable, str(PROBE), transport, json.dumps(calls),
                             "--page", str(vendored.work / "page"), "--", *vendored.command()],
                            cwd=vendored.work, env=vendored.env(token), capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for client in ("fastmcp", "mcp1"):
        seen = report.get(client)
        assert seen and "failed" not in seen, f"{client}: {seen}\n{report.get('stderr', result.stderr)}"
        assert seen["tools"] == NATIVE[vendored.server.package]["tools"], client
        assert not any(call["error"] for call in seen["results"]), seen["results"]
        assert vendored.server.expected in seen["results"][-1]["text"], seen["results"][-1]["text"]
    if transport != "stdio":
        assert report["exit"] == 0, report["stderr"]
        kind = "SSE" if transport == "sse" else "streamable HTTP"
        assert re.search(rf"^mcprun: ready: serving '[^']+' from {re.escape(vendored.server.script)} over {kind} at ",
                         report["stderr"], re.M), report["stderr"]


# -- the other ways to name a vendored server, on one of them -----------------------------------------------


@pytest.fixture(scope="module")
def time_server(vendored) -> Vendored:
    if vendored.server.package != "mcp-server-time":
        pytest.skip("shown on mcp-server-time")
    return vendored


def test_pips_own_script_and_the_scripts_function_name_it_too(token, time_server):
    deps = str(time_server.deps)
    for spec in ([f"{deps}/bin/mcp-server-time"], ["mcp_server_time:main", "--pythonpath", deps]):
        result = subprocess.run(["unshare", "--net", *mcprun_command(), "check", *spec, "--json"],
                                env=child_env(token), capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert sorted(tool["name"] for tool in report["tools"]) == NATIVE["mcp-server-time"]["tools"]
        assert report["path"].startswith("mcp 2.x MCPServer, started by console script mcp-server-time "), report


def test_a_name_that_is_also_a_folder_here_runs_its_console_script(token, time_server, tmp_path):
    # 'mcprun vendor mcp-server-time -o mcp-server-time', then from that folder's parent: the folder was taken
    # for the server and refused ("is a folder; give the server file inside it")
    (tmp_path / "mcp-server-time").symlink_to(time_server.deps, target_is_directory=True)
    result = subprocess.run(["unshare", "--net", *mcprun_command(), "check", "mcp-server-time", "--pythonpath",
                             "mcp-server-time", "--json"], cwd=tmp_path, env=child_env(token), capture_output=True,
                            text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert sorted(tool["name"] for tool in json.loads(result.stdout)["tools"]) == NATIVE["mcp-server-time"]["tools"]


def test_print_config_says_how_a_name_is_served(token, time_server):
    result = run_cli(token, "mcp-server-time", "--pythonpath", str(time_server.deps), "--print-config")
    assert result.returncode == 0, result.stderr
    served = next(line for line in result.stdout.splitlines() if line.startswith("server "))
    assert served.endswith(f"= console script mcp-server-time (mcp_server_time:main from mcp-server-time "
                           f"{LOCK['mcp-server-time'][0]} in {time_server.deps}), which starts its own server: "
                           "caught and served by mcprun"), served


def test_a_name_that_matches_nothing_lists_the_console_scripts_there(token, time_server):
    result = run_cli(token, "mcp-server-tim", "--pythonpath", str(time_server.deps))
    assert result.returncode == 2, result.stderr
    assert result.stderr == ("mcprun: error: 'mcp-server-tim' is no file, module or console script (console scripts "
                             "in the --pythonpath folders: mcp-server-time); give a .py file, module:object, a "
                             "console script, fastmcp.json, mcp.json or an http(s):// URL\n")
