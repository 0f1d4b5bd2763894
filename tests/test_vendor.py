"""mcprun vendor on a connected machine, then the server runs offline with --pythonpath DIR.

Vendoring reaches the package index (the user's own pip, as the user asked); serving then runs
inside a network namespace with no interfaces. The server file needs a pure package, a compiled one
and one with a dependency of its own, plus httpx, which the bundle carries and vendor must leave out.
The bad inputs (a real conflict with the bundle, a resolution past the bound, requirements on old
mcp/fastmcp deep in the tree) use small packages made here and offered to that pip the way a user's
own configuration would offer a local index (PIP_FIND_LINKS, PIP_NO_INDEX), so they are exact.
The corpus of real servers vendored by name is tests/test_corpus.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import (
    EXAMPLES, INITIALIZE, INITIALIZED, ROOT, child_env, error_line, mcprun_command, run_cli, stdio_exchange,
    tools_call, under_test_runs_on,
)

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
VERSION = r"[0-9][0-9a-z.]*"
needs_unshare = pytest.mark.skipif(not shutil.which("unshare"), reason="unshare not installed")
UNDER_TEST = os.environ.get("MCPRUN_UNDER_TEST", "")


def platform_here() -> str:
    """The wheel platform vendor targets by default: the machine the mcprun under test runs on."""
    return f"manylinux_2_28_{under_test_runs_on()[1]}"


def vendor_env(token: str, **extra: str) -> dict:
    """The test venv's python (it has pip) first on PATH: vendor runs pip from PATH when it is a binary."""
    return child_env(token, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", **extra)


def make_wheel(folder: Path, name: str, version: str, requires: tuple = ()) -> None:
    """Write a minimal pure wheel of name==version that requires these."""
    dist = f"{name.replace('-', '_')}-{version}"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {requirement}\n" for requirement in requires)
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{name.replace('-', '_')}.py", "")
        wheel.writestr(f"{dist}.dist-info/METADATA", metadata)
        wheel.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                                                  "Tag: py3-none-any\n")
        wheel.writestr(f"{dist}.dist-info/RECORD", "")


def make_sdist(folder: Path, name: str, version: str, tag: str = "py3-none-any") -> None:
    """Write a source release of name==version (no wheel), whose build (an in-tree backend, nothing to fetch)
    makes a wheel tagged tag: py3-none-any for pure Python, a CPython one for machine code."""
    import io
    import tarfile

    dist = f"{name.replace('-', '_')}-{version}"
    backend = f"""import zipfile
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = "{dist}-{tag}.whl"
    with zipfile.ZipFile(wheel_directory + "/" + name, "w") as wheel:
        wheel.writestr("{name.replace('-', '_')}.py", "BUILT = True\\n")
        wheel.writestr("{dist}.dist-info/METADATA", "Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n")
        wheel.writestr("{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: {tag}\\n")
        wheel.writestr("{dist}.dist-info/RECORD", "")
    return name
"""
    files = {"pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n',
             "backend.py": backend, "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"}
    with tarfile.open(folder / f"{dist}.tar.gz", "w:gz") as sdist:
        for file, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{dist}/{file}")
            info.size = len(data)
            sdist.addfile(info, io.BytesIO(data))


def local_index(token: str, folder: Path) -> dict:
    """The environment of a user whose pip takes packages from folder only."""
    return vendor_env(token, PIP_FIND_LINKS=str(folder), PIP_NO_INDEX="1")


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
    assert re.fullmatch(rf"mcprun: vendored tabulate {VERSION}, msgpack {VERSION}, python-slugify {VERSION} and 1 "
                        rf"package they need \(text-unidecode {VERSION}\) into deps for CPython 3\.1\d on "
                        rf"{platform_here()}\n", result.stderr), result.stderr
    manifest = (folder / "deps" / "MANIFEST").read_text().splitlines()
    assert manifest[1].startswith("python 3.") and manifest[2] == f"platform {platform_here()}"
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


def test_vendor_targets_this_machine_and_a_folder_for_another_is_refused(token, tmp_path):
    # a server that needs nothing beyond the bundle: vendor writes the MANIFEST without pip or the network
    python, machine = under_test_runs_on()
    other = "aarch64" if machine == "x86_64" else "x86_64"
    for folder, options in (("deps", ()), ("other", ("--platform", f"manylinux_2_28_{other}"))):
        made = run_cli(token, "vendor", str(EXAMPLES / "echo.py"), "-o", folder, *options, cwd=tmp_path)
        assert made.returncode == 0, made.stderr
    assert (tmp_path / "deps" / "MANIFEST").read_text().splitlines()[1:] == [f"python {python}",
                                                                           f"platform manylinux_2_28_{machine}"]
    result = run_cli(token, str(EXAMPLES / "echo.py"), "--pythonpath", "other", cwd=tmp_path, input="")
    assert error_line(result, 1) == (
        f"mcprun: error: --pythonpath other was vendored for manylinux_2_28_{other}, but this machine is {machine}: "
        f"vendor again with 'mcprun vendor ... --platform manylinux_2_28_{machine}'")


@needs_unshare
def test_vendored_on_another_machine_serves_here_without_a_network(token, tmp_path):
    # the connected machine (this checkout's mcprun.py, here) vendors for the one the mcprun under test runs
    # on, which may be another (an aarch64 artifact, emulated): its compiled wheels must load there
    python, machine = under_test_runs_on()
    (tmp_path / "server.py").write_text(SERVER)
    made = subprocess.run([sys.executable, str(ROOT / "mcprun.py"), "vendor", "server.py", "-o", "deps",
                           "--python-version", python, "--platform", f"manylinux_2_28_{machine}"],
                          cwd=tmp_path, env=vendor_env(token), capture_output=True, text=True, timeout=300)
    if made.returncode != 0 and "pip install failed" in made.stderr and "connection" in made.stderr.lower():
        pytest.skip(f"the package index is out of reach: {made.stderr.strip()}")
    assert made.returncode == 0, made.stderr
    assert made.stderr.endswith(f" into deps for CPython {python} on manylinux_2_28_{machine}\n"), made.stderr
    assert list((tmp_path / "deps").glob(f"msgpack/*-{machine}-linux-gnu.so"))
    result = stdio_exchange(["unshare", "--net", *mcprun_command(), "server.py", "--pythonpath", "deps"],
                            [INITIALIZE, INITIALIZED, tools_call(2, "pack", {"text": "Hello World"})], token,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1])["result"]["content"][0]["text"] == "12 hello-world 1  2"


# -- what vendor resolves: the newest release, the whole tag ladder, old mcp/fastmcp served ------------


def test_a_package_with_only_manylinux2014_wheels_is_vendored(token, tmp_path):
    # protobuf ships manylinux2014 (= manylinux_2_17) wheels only; the default target, manylinux_2_28, takes them
    result = run_cli(token, "vendor", "protobuf==7.36.2", "-o", "deps", cwd=tmp_path, env=vendor_env(token),
                     timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"mcprun: vendored protobuf 7\.36\.2 into deps for CPython 3\.1\d on {platform_here()}\n",
                        result.stderr), result.stderr
    wheel = (tmp_path / "deps" / "MANIFEST").read_text().splitlines()[3].split()[3]
    assert wheel.endswith(f"-manylinux2014_{under_test_runs_on()[1]}.whl"), wheel


def test_an_unpinned_name_gets_its_newest_release(token, tmp_path):
    newest = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d",
                             str(tmp_path / "pip"), "mcp-server-time"], capture_output=True, text=True, timeout=300)
    assert newest.returncode == 0, newest.stderr
    version = next((tmp_path / "pip").glob("*.whl")).name.split("-")[1]
    result = run_cli(token, "vendor", "mcp-server-time", "-o", "deps", cwd=tmp_path, env=vendor_env(token),
                     timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"mcprun: vendored mcp-server-time {version} and "), result.stderr


def test_old_mcp_and_fastmcp_deep_in_the_tree_are_served_not_backtracked(token, tmp_path):
    # Without the mappings counting, pip would fall back to deep-server 1.0, the one release that needs no old mcp.
    index = tmp_path / "index"
    index.mkdir()
    make_wheel(index, "deep-server", "1.0")
    make_wheel(index, "deep-server", "2.0", ("old-toolkit>=1",))
    make_wheel(index, "old-toolkit", "1.3", ("mcp<2", "fastmcp==2.7.0", "pydantic>=2"))
    result = run_cli(token, "vendor", "deep-server", "-o", "deps", cwd=tmp_path, env=local_index(token, index),
                     timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"mcprun: vendored deep-server 2\.0 and 1 package it needs \(old-toolkit 1\.3\) into deps for "
                        rf"CPython 3\.1\d on {platform_here()}; served by mcprun's mappings, not vendored: mcp<2 "
                        r"\(old-toolkit 1\.3\), fastmcp==2\.7\.0 \(old-toolkit 1\.3\)\n", result.stderr), result.stderr
    assert sorted(path.name for path in (tmp_path / "deps").glob("*.dist-info")) == [
        "deep_server-2.0.dist-info", "old_toolkit-1.3.dist-info"]


# -- bad inputs: one line each, exit 1 ---------------------------------------------------------------


def test_a_real_conflict_names_both_sides_and_the_release_that_fits(token, tmp_path):
    index = tmp_path / "index"
    index.mkdir()
    make_wheel(index, "picky-server", "1.0", ("pydantic>=2",))
    make_wheel(index, "picky-server", "2.0", ("picky-models>=1",))
    make_wheel(index, "picky-models", "1.0", ("pydantic<2.12",))
    result = run_cli(token, "vendor", "picky-server", "-o", "deps", cwd=tmp_path, env=local_index(token, index),
                     timeout=300)
    line = error_line(result, 1)
    assert re.fullmatch(r"mcprun: error: cannot vendor picky-server==2\.0: the bundle has pydantic 2\.\d+\.\d+, which a "
                        r"--pythonpath folder cannot replace; picky-models 1\.0 depends on pydantic<2\.12; an older "
                        r"release would fit: vendor 'picky-server==1\.0'", line), line


def test_a_dependency_released_as_source_only_is_built_into_a_pure_wheel(token, tmp_path):
    # pandoc (mcp-pandoc's), docopt, sgmllib3k (feedparser's): no wheel on PyPI, and pip's --platform takes wheels only
    index = tmp_path / "index"
    index.mkdir()
    make_wheel(index, "source-server", "1.0", ("source-lib>=1",))
    make_sdist(index, "source-lib", "1.2")
    (tmp_path / "source-server").mkdir()  # a folder called as the package (an earlier vendor's) is no server spec
    result = run_cli(token, "vendor", "source-server", "-o", "deps", cwd=tmp_path, env=local_index(token, index),
                     timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.rstrip().endswith("; built here from source releases (pure Python): source-lib 1.2"), \
        result.stderr
    assert (tmp_path / "deps" / "source_lib.py").read_text() == "BUILT = True\n"
    assert re.search(r"^source-lib 1\.2 sha256=[0-9a-f]{64} source_lib-1\.2-py3-none-any\.whl$",
                     (tmp_path / "deps" / "MANIFEST").read_text(), re.M)


def test_a_source_release_with_machine_code_is_refused_with_what_to_do(token, tmp_path):
    index = tmp_path / "index"
    index.mkdir()
    make_wheel(index, "compiled-server", "1.0", ("compiled-lib>=1",))
    make_sdist(index, "compiled-lib", "1.0", tag="cp311-cp311-linux_x86_64")
    result = run_cli(token, "vendor", "compiled-server", "-o", "deps", cwd=tmp_path, env=local_index(token, index),
                     timeout=300)
    assert error_line(result, 1) == (
        "mcprun: error: compiled-lib>=1 has no wheel on the index, and its source release builds machine code: build "
        "its wheel on a machine like the target, put it in a folder and name that folder in PIP_FIND_LINKS")
    assert not (tmp_path / "deps").exists()  # a failed vendor leaves no folder behind


def test_a_package_only_for_newer_pythons_says_which_python_it_needs(token, tmp_path):
    # basic-memory (PyPI) has only releases for Python >= 3.12: pip said "No matching distribution found"
    result = run_cli(token, "vendor", "basic-memory", "--python-version", "3.11", "-o", "deps", cwd=tmp_path,
                     env=vendor_env(token), timeout=300)
    line = error_line(result, 1)
    assert re.fullmatch(r"mcprun: error: basic-memory has no release for CPython 3\.11: its newest needs Python >=3\.1\d"
                        r"\S*; vendor for a Python that fits with --python-version X\.Y, and run mcprun\.pyz with that "
                        r"Python \(the zipapp runs on CPython 3\.11 to 3\.13\)", line), line
    assert not (tmp_path / "deps").exists()


def test_a_requirement_the_bundle_does_not_meet_is_refused(token, tmp_path):
    (tmp_path / "old.py").write_text('# /// script\n# dependencies = ["pydantic<2"]\n# ///\n')
    result = run_cli(token, "vendor", "old.py", "-o", "deps", cwd=tmp_path, env=vendor_env(token))
    line = error_line(result, 1)
    assert re.fullmatch(r"mcprun: error: cannot vendor pydantic<2 \(old\.py \(# /// script\); the bundle has pydantic "
                        r"2\.\d+\.\d+\): a --pythonpath folder never replaces bundled packages", line), line
    assert not (tmp_path / "deps").exists()


def test_a_resolution_past_the_bound_says_what_to_pin(token, tmp_path):
    # slow-lib has 2,500 releases, none installable: pip tries one after another, ~10 ms each here, so it is still
    # at it after 10 s, and has begun even where a loaded machine takes seconds to start pip
    index = tmp_path / "index"
    index.mkdir()
    make_wheel(index, "slow-server", "1.0", ("slow-lib",))
    for release in range(1, 2501):
        make_wheel(index, "slow-lib", f"{release}.0", (f"slow-base=={release}",))
    result = run_cli(token, "vendor", "slow-server==1.0", "-o", "deps", "--resolve-timeout", "10", cwd=tmp_path,
                     env=local_index(token, index), timeout=300)
    assert error_line(result, 1) == (
        "mcprun: error: pip did not resolve slow-server==1.0 within 10 s (it was trying one release after another of "
        "slow-lib: pin it, e.g. 'slow-lib==VERSION'); or give it longer with --resolve-timeout SECONDS")


def test_pip_is_found_through_a_shell_script_on_path(token, tmp_path):
    # pyenv's python3 is a bash script: it must run in the user's environment, not the binary's own libraries'
    (tmp_path / "bin").mkdir()
    shim = tmp_path / "bin" / "python3"
    shim.write_text(f'#!/bin/bash\nexec {sys.executable} "$@"\n')
    shim.chmod(0o755)
    env = child_env(token, PATH=f"{tmp_path / 'bin'}{os.pathsep}/usr/bin{os.pathsep}/bin")
    result = run_cli(token, "vendor", "tabulate", "-o", "deps", cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"mcprun: vendored tabulate {VERSION} into deps for CPython 3\.1\d on "
                        rf"{platform_here()}\n", result.stderr), result.stderr


def test_vendor_without_pip_says_how_to_get_it(token, tmp_path):
    if not UNDER_TEST:
        pytest.skip("the source runs under a Python that has its packages, pip among them")
    command = mcprun_command()
    (tmp_path / "bin").mkdir()
    env = child_env(token, PATH=str(tmp_path / "bin"))  # the binary: no python on PATH at all
    if len(command) > 1:  # the zipapp: run by a python that has no pip, the only one on PATH
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
        command = [str(tmp_path / "venv" / "bin" / "python3"), *command[1:]]
        env["PATH"] = str(tmp_path / "venv" / "bin")
    result = subprocess.run([*command, "vendor", "tabulate", "-o", "deps"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert error_line(result, 1) == (
        "mcprun: error: mcprun vendor needs pip on this machine (e.g. 'apt install python3-pip'); it runs on a "
        "connected machine, never on the air-gapped one")


def test_vendor_needs_an_output_folder(token, tmp_path):
    result = run_cli(token, "vendor", "x.txt", cwd=tmp_path)
    assert error_line(result, 2) == "mcprun: error: mcprun vendor needs -o DIR, the folder to fill"


def test_vendor_needs_something_to_vendor(token, tmp_path):
    result = run_cli(token, "vendor", "-o", "deps", cwd=tmp_path)
    assert error_line(result, 2, "mcprun vendor needs what to vendor: packages (mcp-server-git")


def test_vendor_refuses_what_is_no_requirement(token, tmp_path):
    result = run_cli(token, "vendor", "not a package!", "-o", "deps", cwd=tmp_path)
    assert error_line(result, 2) == \
        "mcprun: error: 'not a package!' is no package, requirements file or server file to vendor"


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


@needs_unshare
def test_a_package_packed_by_name_serves_its_console_script_offline(token, tmp_path):
    result = run_cli(token, "pack", "mcp-server-time==2026.10.19", "-o", str(tmp_path / "time.pyz"), cwd=tmp_path,
                     env=vendor_env(token), timeout=300)
    if result.returncode != 0 and "mcprun pack builds on mcprun.pyz" in result.stderr:
        pytest.skip("run ./build first: pack builds on dist/mcprun.pyz")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[-1].startswith("mcprun: packed mcp-server-time (")
    env = child_env(token, SHIV_ROOT=str(tmp_path / "cache"))
    served = stdio_exchange(["unshare", "--net", str(tmp_path / "time.pyz"), "--", "--local-timezone", "UTC"],
                            [INITIALIZE, INITIALIZED, tools_call(2, "get_current_time", {"timezone": "UTC"})],
                            token, cwd=tmp_path, env=env)
    assert served.returncode == 0, served.stderr
    assert json.loads(json.loads(served.stdout.splitlines()[-1])["result"]["content"][0]["text"])["timezone"] == "UTC"


def test_a_pack_for_aarch64_builds_on_the_aarch64_zipapp(token, tmp_path):
    """pack --platform …_aarch64 copies mcprun-aarch64.pyz (found beside the program under test, or in its dist/),
    not this machine's zipapp, and vendors the aarch64 wheels beside the server."""
    if not (ROOT / "dist" / "mcprun-aarch64.pyz").is_file():
        pytest.skip("no dist/mcprun-aarch64.pyz: ./build made only this machine's artifacts (AARCH64=0)")
    (tmp_path / "server.py").write_text(SERVER)
    result = run_cli(token, "pack", "server.py", "-o", "arm.pyz", "--platform", "manylinux_2_17_aarch64",
                     cwd=tmp_path, env=vendor_env(token), timeout=300)
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(tmp_path / "arm.pyz") as archive:
        compiled = [name for name in archive.namelist() if name.endswith(".so")]
    assert any("aarch64-linux-gnu" in name for name in compiled if "/deps/msgpack/" in name), compiled
    assert any("pydantic_core" in name and "aarch64-linux-gnu" in name for name in compiled), compiled
    assert not [name for name in compiled if "x86_64" in name]


def test_pack_takes_a_server_file(token, tmp_path):
    result = run_cli(token, "pack", "https://example.org/mcp", "-o", str(tmp_path / "x.pyz"), cwd=tmp_path)
    assert error_line(result, 2) == \
        "mcprun: error: mcprun pack takes a server file, fastmcp.json or a package, not url 'https://example.org/mcp'"
