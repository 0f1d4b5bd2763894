"""Every user-facing error: exit code, one 'mcprun: error:' line that quotes the input, no traceback."""

import json
import re
import shutil
import socket
import time

import pytest
from helpers import SERVERS, child_env, error_line, run_cli, usage_error

EXIT_FAILURE, EXIT_USAGE = 1, 2
DEBUG_HINT = "rerun with --log-level DEBUG for the traceback"


def closed_port() -> int:
    """Return a loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- spec: files, names, folders, URLs ---------------------------------------

SPEC_ERRORS = {
    "file missing": (["nope.py"], EXIT_USAGE, "nope.py: no such file"),
    "neither file nor module nor console script": (["server.txt"], EXIT_USAGE,
                                                   "'server.txt' is no file, module or console script (no "
                                                   "--pythonpath folder given: on a connected machine 'mcprun "
                                                   "vendor server.txt -o deps' fetches a package, then add "
                                                   "--pythonpath deps); give a .py file, module:object, a "
                                                   "console script, fastmcp.json, mcp.json or an http(s):// URL"),
    "no console script of that name": (["mcp-server-nowhere", "--pythonpath", "broken"], EXIT_USAGE,
                                       "'mcp-server-nowhere' is no file, module or console script (no console "
                                       "script in the --pythonpath folders); give a .py file, module:object, a "
                                       "console script, fastmcp.json, mcp.json or an http(s):// URL"),
    "unsupported URL scheme": (["ftp://x"], EXIT_USAGE,
                               "unsupported URL scheme 'ftp' in 'ftp://x'; mcprun proxies http:// and https:// "
                               "servers"),
    "URL without host": (["http://:80/mcp"], EXIT_USAGE, "'http://:80/mcp' is not a valid URL: it has no host"),
    "folder as spec": (["broken"], EXIT_USAGE, "broken is a folder; give the server file inside it, e.g. "
                                               "broken/server.py"),
    "object not a Python name": (["named_objects.py:1bad"], EXIT_USAGE,
                                 "'1bad' is not a Python name; use file.py:object"),
    "import string object not a Python name": (["named_objects:1bad"], EXIT_USAGE,
                                               "'1bad' in 'named_objects:1bad' is not a Python name; use "
                                               "module:object"),
    "import string module missing": (["nosuchmod_xyz:mcp"], EXIT_USAGE,
                                     f"module 'nosuchmod_xyz' not found (looked in {SERVERS} and the bundle); "
                                     "check the name, or run mcprun from the folder that holds it"),
    "name not found": (["named_objects.py:nope"], EXIT_USAGE,
                       "named_objects.py has no attribute 'nope'; it defines: custom, not_a_server, "
                       "create_server, create_server_async, needs_arguments, returns_wrong_type, raises"),
    "import string name not found": (["named_objects:nope"], EXIT_USAGE,
                                     "module 'named_objects' has no attribute 'nope'; it defines: custom, "
                                     "not_a_server, create_server, create_server_async, needs_arguments, "
                                     "returns_wrong_type, raises"),
    "no server object, others exist": (["broken/no_server.py"], EXIT_USAGE,
                                       "no server object in broken/no_server.py: tried mcp, server, app; "
                                       "server objects found: my_tools (FastMCP), more_tools (FastMCP); use "
                                       "broken/no_server.py:NAME"),
    "no server object at all": (["broken/empty_module.py"], EXIT_USAGE,
                                "no server object in broken/empty_module.py: tried mcp, server, app; none "
                                "found either — create one (mcp = FastMCP(...)) or name a factory with "
                                "broken/empty_module.py:NAME"),
    "object of the wrong type": (["named_objects.py:not_a_server"], EXIT_USAGE,
                                 "'not_a_server' in named_objects.py is a dict, not an MCP server (FastMCP, "
                                 "MCPServer or a low-level Server) or a function that returns one"),
    "factory needs arguments": (["named_objects.py:needs_arguments"], EXIT_USAGE,
                                "factory 'needs_arguments' needs arguments (name); mcprun calls factories with "
                                "none: give them defaults"),
    "factory returns wrong type": (["named_objects.py:returns_wrong_type"], EXIT_USAGE,
                                   "factory 'returns_wrong_type' returned an int, not an MCP server (FastMCP, "
                                   "MCPServer or a low-level Server) and started none; make it return one; or "
                                   "serve its server object: named_objects:custom"),
    "async factory returns None": (["broken/factories.py:returns_none_async"], EXIT_USAGE,
                                   "factory 'returns_none_async' returned None, not an MCP server (FastMCP, "
                                   "MCPServer or a low-level Server) and started none; make it return one"),
    "entry point that starts nothing": (["cli_app:does_nothing"], EXIT_USAGE,
                                        "factory 'does_nothing' returned None, not an MCP server (FastMCP, "
                                        "MCPServer or a low-level Server) and started none; make it return one"),
}


@pytest.mark.parametrize(("args", "code", "message"), SPEC_ERRORS.values(), ids=SPEC_ERRORS.keys())
def test_spec_error(token, args, code, message):
    assert error_line(run_cli(token, *args, cwd=SERVERS), code) == f"mcprun: error: {message}"


def test_unsupported_file_type(token, tmp_path):
    (tmp_path / "server.txt").write_text("mcp = None\n")
    error_line(run_cli(token, "server.txt", cwd=tmp_path), EXIT_USAGE,
               "server.txt: unsupported spec", "give a .py file, module:object")


def test_folder_holding_config(token, tmp_path):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "fastmcp.json").write_text('{"source": {"path": "server.py"}}')
    error_line(run_cli(token, "app", cwd=tmp_path), EXIT_USAGE,
               "app is a folder", "run its config with 'mcprun app/fastmcp.json'")


def test_no_spec_and_no_config(token, tmp_path):
    error_line(run_cli(token, cwd=tmp_path), EXIT_USAGE,
               f"no SPEC given and no fastmcp.json in {tmp_path}", "e.g. 'mcprun server.py'")


# -- user code that fails: exit 1, one line, the traceback only at DEBUG ------

USER_CODE_ERRORS = {
    "syntax error": (["broken/syntax_error.py"], r"syntax error in broken/syntax_error\.py:6: invalid syntax"),
    "raises at import": (["broken/raises_at_import.py"],
                         r"importing broken/raises_at_import\.py failed: RuntimeError: config file missing "
                         r"\(broken/raises_at_import\.py:\d+\)"),
    "factory raises": (["named_objects.py:raises"],
                       r"factory 'raises' raised RuntimeError: database unavailable \(named_objects\.py:\d+\)"),
    "async factory raises": (["broken/factories.py:create_server_async"],
                             r"factory 'create_server_async' raised RuntimeError: cache unreachable "
                             r"\(broken/factories\.py:\d+\)"),
}


@pytest.mark.parametrize(("args", "pattern"), USER_CODE_ERRORS.values(), ids=USER_CODE_ERRORS.keys())
def test_user_code_error(token, args, pattern):
    line = error_line(run_cli(token, *args, cwd=SERVERS), EXIT_FAILURE, DEBUG_HINT)
    assert re.search(pattern, line), line


@pytest.mark.parametrize(("args", "pattern"), USER_CODE_ERRORS.values(), ids=USER_CODE_ERRORS.keys())
def test_user_code_error_debug_traceback(token, args, pattern):
    result = run_cli(token, *args, "--log-level", "DEBUG", cwd=SERVERS)
    errors = [line for line in result.stderr.splitlines() if line.startswith("mcprun: error:")]
    assert result.returncode == EXIT_FAILURE, result.stderr
    assert "Traceback (most recent call last):" in result.stderr
    assert len(errors) == 1 and re.search(pattern, errors[0]), result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == errors[0]
    assert DEBUG_HINT not in errors[0]


def test_missing_dependency(token):
    error_line(run_cli(token, "broken/import_missing_dependency.py", cwd=SERVERS), EXIT_FAILURE,
               "broken/import_missing_dependency.py imports 'not_installed_pkg_xyz', which is not installed",
               "on a connected machine run 'mcprun vendor PACKAGE --python-version 3.11 -o DIR', then add --pythonpath DIR "
               "(PACKAGE: the one that provides 'not_installed_pkg_xyz')")


def test_entry_point_refusing_its_arguments(token):
    # argparse says why in its own words; mcprun adds its one line and passes the exit code on
    result = run_cli(token, "cli_app:main", "--", "--no-such-option", cwd=SERVERS, input="")
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr
    assert lines[0].startswith("usage: cli-app [-h] [--greeting GREETING]")
    assert lines[-1] == ("mcprun: error: 'main' in cli_app:main exited with code 2 before it started a server (its "
                         "own message is above)")
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("transport", ["stdio", "http"])
def test_a_program_that_writes_the_protocol_itself_is_refused(token, transport):
    result = run_cli(token, "--script", "broken/hand_written.py", "-t", transport, "-p", "0", cwd=SERVERS, input="")
    error_line(result, EXIT_FAILURE,
               "broken/hand_written.py ended without starting an MCP server mcprun can serve (FastMCP.run(), "
               "MCPServer.run(), a low-level Server.run() over stdio_server()); a program that writes the protocol "
               "itself cannot be served by mcprun")


def test_check_of_a_module_that_does_not_exist_fails(token):
    result = run_cli(token, "check", "-m", "nosuchmod_xyz", cwd=SERVERS)
    assert result.returncode == EXIT_FAILURE, result.stderr
    assert result.stderr == ("mcprun: error: cannot run module 'nosuchmod_xyz': No module named nosuchmod_xyz; check "
                             "the name, or run mcprun from the folder that holds it (or add --pythonpath DIR)\n")
    assert result.stdout.startswith("mcprun check: it would not serve\n")


# -- -m module ---------------------------------------------------------------

MODULE_ERRORS = {
    "missing module name": (["-m"], EXIT_USAGE, "-m needs a module name, e.g. 'mcprun -m my_package.server'"),
    "invalid module name": (["-m", "1bad"], EXIT_USAGE, "-m needs a module name such as 'my_package.server', "
                                                        "not '1bad'"),
    "module not found": (["-m", "nosuchmod_xyz"], EXIT_USAGE,
                         "cannot run module 'nosuchmod_xyz': No module named nosuchmod_xyz; check the name, or "
                         "run mcprun from the folder that holds it (or add --pythonpath DIR)"),
    "module imports missing package": (["-m", "broken.import_missing_dependency"], EXIT_FAILURE,
                                       "module 'broken.import_missing_dependency' imports "
                                       "'not_installed_pkg_xyz', which is not installed: mcprun bundles "
                                       "fastmcp, mcp, httpx and their dependencies only; on a connected "
                                       "machine run 'mcprun vendor PACKAGE --python-version 3.11 -o DIR', "
                                       "then add --pythonpath DIR (PACKAGE: the one that provides "
                                       "'not_installed_pkg_xyz'); rerun with "
                                       "--log-level DEBUG for the traceback"),
}


@pytest.mark.parametrize(("args", "code", "message"), MODULE_ERRORS.values(), ids=MODULE_ERRORS.keys())
def test_module_error(token, args, code, message):
    assert error_line(run_cli(token, *args, cwd=SERVERS), code) == f"mcprun: error: {message}"


# -- fastmcp.json and mcp.json -----------------------------------------------

SOURCE = {"path": "server.py"}
CONFIG_ERRORS = {
    "fastmcp.json bad JSON": ("fastmcp.json", '{\n  "source": {"path": "server.py"}\n  "deployment": {}\n}',
                              "fastmcp.json:3:3: invalid JSON: Expecting ',' delimiter"),
    "fastmcp.json not an object": ("fastmcp.json", [], "fastmcp.json: expected a JSON object with a 'source' key"),
    "source missing": ("fastmcp.json", {"deployment": {}},
                       "fastmcp.json: missing key 'source' (e.g. \"source\": {\"path\": \"server.py\"}); an mcp.json "
                       "needs 'mcpServers' instead"),
    "source not an object": ("fastmcp.json", {"source": "server.py"},
                             "fastmcp.json: 'source' must be an object"),
    "source.path missing": ("fastmcp.json", {"source": {}}, "fastmcp.json: missing key 'source.path' (the "
                                                            "server file)"),
    "source.path not a string": ("fastmcp.json", {"source": {"path": 5}},
                                 "fastmcp.json: 'source.path' must be a string"),
    "source.path no such file": ("fastmcp.json", {"source": {"path": "missing.py"}},
                                 "TMP/missing.py: no such file (source.path in fastmcp.json)"),
    "source.type unsupported": ("fastmcp.json", {"source": {**SOURCE, "type": "git"}},
                                "fastmcp.json: 'source.type' 'git' is not supported; use \"filesystem\""),
    "deployment not an object": ("fastmcp.json", {"source": SOURCE, "deployment": "http"},
                                 "fastmcp.json: 'deployment' must be an object"),
    "deployment.port not an integer": ("fastmcp.json", {"source": SOURCE, "deployment": {"port": "8000"}},
                                       "fastmcp.json: 'deployment.port' must be an integer"),
    "deployment.port out of range": ("fastmcp.json", {"source": SOURCE, "deployment": {"port": 70000}},
                                     "fastmcp.json: 'deployment.port' must be 0-65535, not 70000"),
    "deployment.transport invalid": ("fastmcp.json", {"source": SOURCE, "deployment": {"transport": "pigeon"}},
                                     "fastmcp.json: 'deployment.transport' must be one of stdio, http, "
                                     "streamable-http, sse, not 'pigeon'"),
    "deployment.args not strings": ("fastmcp.json", {"source": SOURCE, "deployment": {"args": [1]}},
                                    "fastmcp.json: 'deployment.args' must be an array of strings"),
    "deployment.env not strings": ("fastmcp.json", {"source": SOURCE, "deployment": {"env": {"A": 1}}},
                                   "fastmcp.json: 'deployment.env' values must be strings"),
    "mcp.json bad JSON": ("mcp.json", '{"mcpServers": {"a": {"command": "x",}}}',
                          "mcp.json:1:38: invalid JSON: Expecting property name enclosed in double quotes"),
    "mcpServers missing": ("mcp.json", {"servers": {"a": {"command": "x"}}},
                           "mcp.json: 'mcpServers' must be an object with at least one server"),
    "mcpServers empty": ("mcp.json", {"mcpServers": {}},
                         "mcp.json: 'mcpServers' must be an object with at least one server"),
    "mcpServers not an object": ("mcp.json", {"mcpServers": []},
                                 "mcp.json: 'mcpServers' must be an object with at least one server"),
    "entry not an object": ("mcp.json", {"mcpServers": {"a": "x"}},
                            "mcp.json: 'mcpServers.a' must be an object with 'command' or 'url'"),
    "entry without command or url": ("mcp.json", {"mcpServers": {"a": {"args": []}}},
                                     "mcp.json: 'mcpServers.a' needs 'command' (a local server) or 'url' (a "
                                     "remote one)"),
    "entry command not a string": ("mcp.json", {"mcpServers": {"a": {"command": 1}}},
                                   "mcp.json: 'mcpServers.a.command' must be a string"),
    "entry args not an array": ("mcp.json", {"mcpServers": {"a": {"command": "python", "args": "x"}}},
                                "mcp.json: 'mcpServers.a.args' must be an array"),
    "entry url not http": ("mcp.json", {"mcpServers": {"a": {"url": "ftp://x"}}},
                           "mcp.json: 'mcpServers.a.url' must be an http:// or https:// URL"),
}


@pytest.mark.parametrize(("name", "content", "message"), CONFIG_ERRORS.values(), ids=CONFIG_ERRORS.keys())
def test_config_error(token, tmp_path, name, content, message):
    (tmp_path / "server.py").write_text("from fastmcp import FastMCP\n\nmcp = FastMCP('Demo')\n")
    (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
    message = message.replace("TMP/", f"{tmp_path}/")  # where the test writes the config
    assert error_line(run_cli(token, name, cwd=tmp_path), EXIT_USAGE) == f"mcprun: error: {message}"


def test_default_config_bad_json(token, tmp_path):
    (tmp_path / "fastmcp.json").write_text('{"source": ')
    error_line(run_cli(token, cwd=tmp_path), EXIT_USAGE, "fastmcp.json:1:12: invalid JSON")


def test_config_unknown_key_warns_before_error(token, tmp_path):
    (tmp_path / "fastmcp.json").write_text(json.dumps({"sauce": SOURCE}))
    error_line(run_cli(token, "fastmcp.json", cwd=tmp_path), EXIT_USAGE,
               "fastmcp.json: missing key 'source'", warnings=1)


# -- command line and MCPRUN_* environment -----------------------------------

ARGPARSE_ERRORS = {
    "unknown transport": (["-t", "carrier-pigeon"], "argument -t/--transport: invalid choice: 'carrier-pigeon' "
                                                    "(choose from 'stdio', 'http', 'streamable-http', 'sse')"),
    "port out of range": (["-p", "70000"], "argument -p/--port: 70000 is not a port number (0-65535)"),
    "port not a number": (["-p", "abc"], "argument -p/--port: 'abc' is not a port number (0-65535)"),
    "unknown log level": (["--log-level", "loud"], "argument -l/--log-level: invalid choice: 'loud' (choose "
                                                   "one of DEBUG, INFO, WARNING, ERROR, CRITICAL)"),
}


@pytest.mark.parametrize(("args", "message"), ARGPARSE_ERRORS.values(), ids=ARGPARSE_ERRORS.keys())
def test_argparse_error(token, args, message):
    assert usage_error(run_cli(token, "fastmcp_server.py", *args, cwd=SERVERS)) == f"mcprun: error: {message}"


ENVIRONMENT_ERRORS = {
    "MCPRUN_PORT not a number": ("MCPRUN_PORT", "abc", "MCPRUN_PORT='abc': 'abc' is not a port number (0-65535)"),
    "MCPRUN_PORT out of range": ("MCPRUN_PORT", "70000", "MCPRUN_PORT='70000': 70000 is not a port number "
                                                         "(0-65535)"),
    "MCPRUN_TRANSPORT unknown": ("MCPRUN_TRANSPORT", "x", "MCPRUN_TRANSPORT='x': choose one of stdio, http, "
                                                          "streamable-http, sse"),
    "MCPRUN_NO_BANNER not a boolean": ("MCPRUN_NO_BANNER", "maybe",
                                       "MCPRUN_NO_BANNER='maybe': expected 1/0, true/false, yes/no or on/off"),
    "MCPRUN_LOG_LEVEL unknown": ("MCPRUN_LOG_LEVEL", "loud",
                                 "MCPRUN_LOG_LEVEL='loud': choose one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
}


@pytest.mark.parametrize(("variable", "value", "message"), ENVIRONMENT_ERRORS.values(),
                         ids=ENVIRONMENT_ERRORS.keys())
def test_environment_error(token, variable, value, message):
    env = child_env(token)
    env[variable] = value
    assert error_line(run_cli(token, "fastmcp_server.py", cwd=SERVERS, env=env), EXIT_USAGE) == \
        f"mcprun: error: {message}"


COMBINATION_ERRORS = {  # options that do not go together: one line, as every other usage error, no usage text
    "--json without check": (["fastmcp_server.py", "--json"], "--json goes with 'mcprun check'"),
    "vendor options when running": (["fastmcp_server.py", "-o", "deps"], "-o/--output, --python-version, --platform "
                                    "and --resolve-timeout go with 'mcprun vendor' or 'mcprun pack'"),
    "-m and --script": (["-m", "--script", "runnable_module"],
                        "-m and --script exclude each other: -m runs a module, --script a file"),
    "vendor without what": (["vendor"], "mcprun vendor needs what to vendor: packages (mcp-server-git, "
                            "'excel-mcp-server==2.2.2'), a requirements file or a server file"),
}


@pytest.mark.parametrize(("args", "line"), COMBINATION_ERRORS.values(), ids=COMBINATION_ERRORS.keys())
def test_options_that_do_not_go_together(token, args, line):
    assert error_line(run_cli(token, *args, cwd=SERVERS), EXIT_USAGE) == f"mcprun: error: {line}"


def test_stateless_with_sse(token):
    error_line(run_cli(token, "fastmcp_server.py", "--stateless", "-t", "sse", cwd=SERVERS), EXIT_USAGE,
               "--stateless needs --transport http")


# -- run time: ports and remote servers ---------------------------------------


def test_port_in_use(token):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(token, "fastmcp_server.py", "-t", "http", "-p", str(port), cwd=SERVERS)
    error_line(result, EXIT_FAILURE, f"port {port} on 127.0.0.1 is in use", "--port 0 for a free one")


def test_a_failure_to_serve_that_the_servers_own_code_catches_is_still_reported(token):
    # its main() prints the error and exits 1; mcprun's line and exit code say what failed all the same
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(token, "swallows_errors:main", "-t", "http", "-p", str(port), cwd=SERVERS, input="")
    assert result.returncode == EXIT_FAILURE, result.stderr
    assert result.stderr.splitlines()[-1] == (f"mcprun: error: port {port} on 127.0.0.1 is in use; choose another "
                                              "with --port, or --port 0 for a free one")


def test_unreachable_url(token):
    url = f"http://127.0.0.1:{closed_port()}/mcp"
    started = time.monotonic()
    result = run_cli(token, url, timeout=30)
    assert time.monotonic() - started < 20
    error_line(result, EXIT_FAILURE, f"cannot reach {url}", "check the URL and that the server is up")


POLICY_ERRORS = {  # --policy FILE: one line naming the file and the line
    "no file": (None, "--policy policy: No such file or directory"),
    "who without tools": ("alice git_*\nbob\n", "--policy policy, line 2: 'bob' is not 'WHO GLOB...' (WHO: a "
                          "caller's name, scope:SCOPE or *; GLOB: tool names, !GLOB to leave out)"),
    "empty scope": ("scope: git_*\n", "--policy policy, line 1: 'scope: git_*' is not 'WHO GLOB...' (WHO: a "
                    "caller's name, scope:SCOPE or *; GLOB: tool names, !GLOB to leave out)"),
    "not text": (b"\xff\xfe alice *\n", "--policy policy: not UTF-8 text"),
}


@pytest.mark.parametrize(("content", "message"), POLICY_ERRORS.values(), ids=POLICY_ERRORS.keys())
def test_policy_file_error(token, tmp_path, content, message):
    if content is not None:
        (tmp_path / "policy").write_bytes(content if isinstance(content, bytes) else content.encode())
    shutil.copy(SERVERS / "fastmcp_server.py", tmp_path)
    shutil.copy(SERVERS / "demo.py", tmp_path)
    line = error_line(run_cli(token, "fastmcp_server.py", "--policy", "policy", cwd=tmp_path), EXIT_USAGE)
    assert line == f"mcprun: error: {message}"


def test_pack_for_another_machine_needs_that_machines_zipapp(token, tmp_path):
    """A pack for aarch64 builds on mcprun-aarch64.pyz, not on this machine's zipapp: without one beside the
    program (here a copy of mcprun.py with no dist/ folder), one line says which file it needs."""
    import subprocess
    import sys

    from helpers import ROOT

    shutil.copy(ROOT / "mcprun.py", tmp_path / "mcprun.py")
    shutil.copy(SERVERS / "fastmcp_server.py", tmp_path / "server.py")
    result = subprocess.run([sys.executable, str(tmp_path / "mcprun.py"), "pack", "server.py", "-o", "x.pyz",
                             "--platform", "manylinux_2_17_aarch64"], cwd=tmp_path, env=child_env(token),
                            capture_output=True, text=True, timeout=120)
    assert error_line(result, 2) == ("mcprun: error: mcprun pack for aarch64 builds on mcprun-aarch64.pyz, the "
                                     "zipapp for that machine: put it beside this mcprun (or name it with "
                                     "MCPRUN_PYZ)")
    assert not (tmp_path / "x.pyz").exists()
