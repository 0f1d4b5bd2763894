"""The Node.js programs the tests run, locked in packaging/node and installed once per lock, on first
use, into build-cache/node (outside the tracked files); .ci/run installs node and npm.

    node_modules()   the installed packages (tests/idp.py runs oauth2-mock-server from there)
    inspector_cli()  the MCP Inspector's CLI: (command, the folder to run it in)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "packaging" / "node"  # package.json, package-lock.json, idp.mjs
CACHE = ROOT / "build-cache" / "node"  # its node_modules; build-cache/node.stamp says for which lock
INSTALL_TIMEOUT = 600.0  # seconds for npm ci
MINIMUM_NODE = 20  # the Inspector CLI's MCP SDK needs it (oauth2-mock-server 8 runs on 18)

_installed: dict[str, Path] = {}  # stamp -> node_modules, once checked in this process


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"tests/node.py: {name} is not installed; the JWT and Inspector tests run Node.js programs "
                    f"(.ci/run installs node and npm: apt-get install nodejs npm)", pytrace=False)
    return path


def node_modules() -> Path:
    """Install packaging/node's locked packages into build-cache/node unless there for this lock; return node_modules.

    Safe under pytest-xdist: the workers take turns on a lock file, and only the first one installs.
    """
    manifests = [PACKAGE / "package.json", PACKAGE / "package-lock.json"]
    stamp = hashlib.sha256(b"".join(path.read_bytes() for path in manifests)).hexdigest()[:16]
    if stamp in _installed:
        return _installed[stamp]
    node, npm = tool("node"), tool("npm")
    version = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    if not version.startswith("v") or int(version[1:].split(".")[0]) < MINIMUM_NODE:
        pytest.fail(f"tests/node.py: {node} is {version or 'unknown'}; the Inspector CLI needs Node.js "
                    f"{MINIMUM_NODE} or newer", pytrace=False)
    stamp_file = CACHE.parent / "node.stamp"
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with open(CACHE.parent / "node.flock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(OSError):
            if stamp_file.read_text().strip() == stamp and (CACHE / "node_modules").is_dir():
                _installed[stamp] = CACHE / "node_modules"
                return _installed[stamp]
        stamp_file.unlink(missing_ok=True)
        shutil.rmtree(CACHE, ignore_errors=True)
        CACHE.mkdir()
        for path in manifests:
            shutil.copyfile(path, CACHE / path.name)
        command = [npm, "ci", "--prefix", str(CACHE), "--ignore-scripts", "--no-audit", "--no-fund",
                   "--loglevel=error"]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                                    stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            pytest.fail(f"tests/node.py: {' '.join(command)} took more than {INSTALL_TIMEOUT}s", pytrace=False)
        if result.returncode != 0:
            pytest.fail(f"tests/node.py: {' '.join(command)} failed ({result.returncode}):\n"
                        f"{result.stdout[-3000:]}{result.stderr[-3000:]}", pytrace=False)
        stamp_file.write_text(stamp + "\n")
    _installed[stamp] = CACHE / "node_modules"
    return _installed[stamp]



def inspector_cli() -> tuple[list[str], Path]:
    """The command that runs the MCP Inspector's CLI (@modelcontextprotocol/inspector-cli), and the folder to
    run it in: it reads its own package.json by a path relative to the working folder."""
    build = node_modules() / "@modelcontextprotocol" / "inspector-cli" / "build"
    return [tool("node"), str(build / "cli.js")], build
