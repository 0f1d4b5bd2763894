"""mcprun vendor on a connected machine, then the server runs offline with --pythonpath DIR.

Vendoring reaches the package index (pip, as the user asked); serving then runs inside a network
namespace with no interfaces. The server needs a pure package, a compiled one and one with a
dependency of its own, plus httpx, which the bundle carries and vendor must leave out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import INITIALIZE, INITIALIZED, child_env, mcprun_command, run_cli, stdio_exchange, tools_call

SERVER = '''# /// script
# dependencies = ["tabulate>=0.9", "msgpack>=1", "python-slugify", "httpx"]
# ///
import msgpack
import slugify
import tabulate
from fastmcp import FastMCP

mcp = FastMCP("Vendored")


@mcp.tool
def pack(text: str) -> str:
    return f"{len(msgpack.packb(text))} {slugify.slugify(text)} {tabulate.tabulate([[1, 2]], tablefmt='plain')}"
'''
PACKAGES = {"msgpack", "python-slugify", "tabulate", "text-unidecode"}
needs_unshare = pytest.mark.skipif(not shutil.which("unshare"), reason="unshare not installed")


def vendor_env(token: str) -> dict:
    """The test venv's python (it has pip) first on PATH: vendor runs pip from PATH when it is a binary."""
    return child_env(token, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


@pytest.fixture(scope="module")
def vendored(tmp_path_factory):
    """A server file and the folder 'mcprun vendor' filled for it (once per module: it downloads)."""
    import uuid

    token = uuid.uuid4().hex
    folder = tmp_path_factory.mktemp("vendor")
    (folder / "server.py").write_text(SERVER)
    result = run_cli(token, "vendor", "server.py", "-o", "deps", cwd=folder, env=vendor_env(token), timeout=300)
    if result.returncode != 0 and "pip install failed" in result.stderr and "connection" in result.stderr.lower():
        pytest.skip(f"the package index is out of reach: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    return folder, result


def test_vendor_installs_what_the_bundle_lacks_and_writes_a_manifest(vendored):
    folder, result = vendored
    assert "mcprun: vendored 4 package(s) into deps for CPython 3." in result.stderr
    manifest = (folder / "deps" / "MANIFEST").read_text().splitlines()
    assert manifest[1].startswith("python 3.") and manifest[2] == "platform manylinux_2_28_x86_64"
    entries = {line.split()[0]: line.split() for line in manifest[3:]}
    assert set(entries) == PACKAGES  # httpx comes with mcprun: never vendored beside it
    for name, version, digest, wheel in entries.values():
        assert digest.startswith("sha256=") and len(digest) == 71 and wheel.endswith(".whl")
    assert not (folder / "deps" / "httpx").exists()
    assert list((folder / "deps").glob("msgpack/*.so"))  # the compiled one


@needs_unshare
def test_vendored_server_runs_without_a_network(token, vendored):
    folder, _ = vendored
    result = stdio_exchange(["unshare", "--net", *mcprun_command(), "server.py", "--pythonpath", "deps"],
                            [INITIALIZE, INITIALIZED, tools_call(2, "pack", {"text": "Hello World"})], token,
                            cwd=folder)
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout.splitlines()[-1])
    assert reply["result"]["content"][0]["text"] == "12 hello-world 1  2"


@needs_unshare
def test_check_offline_with_and_without_the_folder(token, vendored):
    folder, _ = vendored
    ok = subprocess.run(["unshare", "--net", *mcprun_command(), "check", "server.py", "--pythonpath", "deps",
                         "--json"], cwd=folder, env=child_env(token), capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["tools"] == [{"name": "pack", "description": None}]
    missing = run_cli(token, "check", "server.py", cwd=folder)
    assert missing.returncode == 1
    assert "msgpack>=1 (not installed; server.py (# /// script))" in missing.stderr
    assert "'mcprun vendor server.py --with \"tabulate>=0.9\" --with \"msgpack>=1\"" in missing.stderr


def test_folder_for_another_python_is_refused(token, vendored):
    folder, _ = vendored
    other = folder / "other"
    shutil.copytree(folder / "deps", other)
    manifest = other / "MANIFEST"
    manifest.write_text(manifest.read_text().replace("python 3.", "python 2.", 1))
    result = run_cli(token, "server.py", "--pythonpath", "other", cwd=folder, input="")
    assert result.returncode == 1
    assert result.stderr.startswith("mcprun: error: --pythonpath other was vendored for Python 2.")
    assert "vendor again with 'mcprun vendor ... --python-version 3." in result.stderr


def test_vendor_refuses_to_replace_bundled_packages(token, tmp_path):
    (tmp_path / "old.py").write_text('# /// script\n# dependencies = ["pydantic<2"]\n# ///\n')
    result = run_cli(token, "vendor", "old.py", "-o", "deps", cwd=tmp_path, env=vendor_env(token))
    assert result.returncode == 1
    assert result.stderr.startswith("mcprun: error: cannot vendor pydantic<2 (the bundle has 2.")
    assert not (tmp_path / "deps").exists()


def test_vendor_needs_an_output_folder(token, tmp_path):
    result = run_cli(token, "vendor", "x.txt", cwd=tmp_path)
    assert result.returncode == 2
    assert "mcprun vendor needs -o DIR" in result.stderr


# -- mcprun pack: one zipapp with the server and its packages ----------------------------------


@needs_unshare
def test_packed_zipapp_serves_from_an_empty_folder_offline(token, vendored, tmp_path):
    folder, _ = vendored
    (folder / "notes.txt").write_text("files beside the server travel too\n")
    result = run_cli(token, "pack", "server.py", "-o", str(tmp_path / "packed.pyz"), cwd=folder,
                     env=vendor_env(token), timeout=300)
    if result.returncode != 0 and "mcprun pack builds on mcprun.pyz" in result.stderr:
        pytest.skip("run ./build first: pack builds on dist/mcprun.pyz")
    assert result.returncode == 0, result.stderr
    assert "mcprun: packed server.py from . (" in result.stderr
    fresh = tmp_path / "elsewhere"
    fresh.mkdir()
    shutil.copy(tmp_path / "packed.pyz", fresh / "server.pyz")
    env = child_env(token, SHIV_ROOT=str(tmp_path / "cache"))
    served = stdio_exchange(["unshare", "--net", str(fresh / "server.pyz")],
                            [INITIALIZE, INITIALIZED, tools_call(2, "pack", {"text": "Hello World"})], token,
                            cwd=fresh, env=env)
    assert served.returncode == 0, served.stderr
    assert json.loads(served.stdout.splitlines()[-1])["result"]["content"][0]["text"] == "12 hello-world 1  2"
    checked = subprocess.run(["unshare", "--net", "python3", str(fresh / "server.pyz"),
                              "check", "--json"], cwd=fresh, env=env, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr
    unpacked = Path(json.loads(checked.stdout)["spec"]).parent
    assert (unpacked / "notes.txt").read_text() == "files beside the server travel too\n"
    assert list(fresh.iterdir()) == [fresh / "server.pyz"]  # nothing written beside it


def test_pack_takes_a_server_file(token, tmp_path):
    result = run_cli(token, "pack", "https://example.org/mcp", "-o", str(tmp_path / "x.pyz"), cwd=tmp_path)
    assert result.returncode == 2
    assert "mcprun pack takes a server file or fastmcp.json, not url" in result.stderr
