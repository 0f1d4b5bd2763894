"""fastmcp.json, mcp.json, MCPRUN_* variables and URL proxies, end to end through real clients."""

import json
import os
import re
from pathlib import Path

import pytest
from fastmcp.client.transports import SSETransport
from helpers import (
    DEMO_RESULT, ROOT, SERVERS, TOKEN_VARIABLE, child_env, exercise_fastmcp, exercise_sdk, free_port,
    mcprun_command, run_async, run_cli, serving, started, stdio_transport,
)

CONFIGS = SERVERS / "configs"
BANNER = re.compile(r"^mcprun: serving '.*' from .* over stdio$", re.M)


def clean_env(token: str, **extra: str) -> dict:
    """child_env() without MCPRUN_* settings from the outer environment, plus extra."""
    env = {k: v for k, v in child_env(token).items()
           if not k.startswith("MCPRUN_") or k in (TOKEN_VARIABLE, "MCPRUN_UNDER_TEST")}
    return {**env, **extra}


def write_config(folder: Path, name: str = "fastmcp.json", **sections) -> Path:
    """Write a fastmcp.json-style file into folder; source defaults to env_server.py (absolute)."""
    sections.setdefault("source", {"path": str(SERVERS / "env_server.py")})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(sections), encoding="utf-8")
    return path


async def call_tools(target, *calls: tuple[str, dict]) -> list[str]:
    """Call each (tool, arguments) through fastmcp's Client; return the texts."""
    from fastmcp import Client

    async with Client(target) as client:
        return [(await client.call_tool(name, arguments)).content[0].text for name, arguments in calls]


def log_levels(stderr: str) -> set[str]:
    """Return the levels of the log records in stderr ('12:00:00 INFO name: ...')."""
    return set(re.findall(r"^\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) ", stderr, re.M))


# -- fastmcp.json: source ------------------------------------------------------


@pytest.mark.parametrize("config", ["fastmcp.json", "entrypoint.json", "path_with_object.json"])
def test_source_relative_to_config_from_another_cwd(token, config):
    # source.path is '../...', anchored to the config's folder, not to the cwd (the repo root here).
    spec = f"tests/servers/configs/{config}"
    assert run_async(exercise_fastmcp(stdio_transport(token, spec, cwd=ROOT))) == DEMO_RESULT


def test_source_relative_to_config_http_both_clients(token, tmp_path):
    with serving(token, str(CONFIGS / "entrypoint.json"), cwd=tmp_path) as server:
        assert run_async(exercise_fastmcp(server.url)) == DEMO_RESULT
        assert run_async(exercise_sdk("http", server.url)) == DEMO_RESULT


def test_symlinked_config_anchors_beside_the_link(token, tmp_path):
    # As fastmcp does (anchor_paths, apply_runtime_settings): source.path and deployment.cwd are
    # taken beside the link, not beside the file it points to.
    for folder in ("real", "link"):
        (tmp_path / folder / "data").mkdir(parents=True)
        (tmp_path / folder / "server.py").write_text(
            "import os\nfrom fastmcp import FastMCP\n"
            f"print('cwd', os.getcwd())\nmcp = FastMCP({folder!r})\n"
        )
    write_config(tmp_path / "real", source={"path": "server.py"}, deployment={"cwd": "data"})
    (tmp_path / "link" / "fastmcp.json").symlink_to(tmp_path / "real" / "fastmcp.json")
    result = run_cli(token, "link/fastmcp.json", cwd=tmp_path, input="")
    assert result.returncode == 0, result.stderr
    assert f"cwd {tmp_path.resolve() / 'link' / 'data'}\n" in result.stderr  # stdout, diverted off the wire
    assert BANNER.search(result.stderr)[0].startswith("mcprun: serving 'link' from ")


def test_auto_detects_fastmcp_json(token):
    assert run_async(exercise_fastmcp(stdio_transport(token, cwd=CONFIGS))) == DEMO_RESULT
    with serving(token, cwd=CONFIGS) as server:
        assert run_async(exercise_sdk("http", server.url)) == DEMO_RESULT


# -- fastmcp.json: deployment ---------------------------------------------------


@pytest.mark.parametrize("transport, host, path, log_level, kind", [
    ("sse", "127.0.0.2", "/events", "WARNING", "SSE"),
    ("http", "127.0.0.1", "/custom-mcp", "DEBUG", "streamable HTTP"),
])
def test_deployment_settings_honoured(token, tmp_path, transport, host, path, log_level, kind):
    port = free_port()
    deployment = {"transport": transport, "host": host, "port": port, "path": path, "log_level": log_level}
    config = write_config(tmp_path, source={"path": str(SERVERS / "fastmcp_server.py")}, deployment=deployment)
    with started(token, str(config), env=clean_env(token)) as server:
        assert server.url == f"http://{host}:{port}{path}"
        assert f" over {kind} at " in server.stderr
        # fastmcp's Client guesses SSE only from a URL ending in /sse: name the transport.
        client_transport = SSETransport(server.url) if transport == "sse" else server.url
        assert run_async(exercise_fastmcp(client_transport)) == DEMO_RESULT
        assert run_async(exercise_sdk(transport, server.url)) == DEMO_RESULT
        levels = log_levels(server.stderr)
    assert "INFO" not in levels if log_level == "WARNING" else "DEBUG" in levels


def test_cli_flags_override_config(token, tmp_path):
    deployment = {"transport": "sse", "port": 1, "path": "/events", "log_level": "WARNING"}
    config = write_config(tmp_path, source={"path": str(SERVERS / "fastmcp_server.py")}, deployment=deployment)
    # serving() adds --transport http --port 0
    with serving(token, str(config), "--path", "/flag", "--log-level", "INFO", env=clean_env(token)) as server:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/flag", server.url)
        assert " over streamable HTTP at " in server.stderr
        assert run_async(exercise_sdk("http", server.url)) == DEMO_RESULT
        assert "INFO" in log_levels(server.stderr)


def test_deployment_env_interpolated(token, tmp_path):
    env = {"DEMO_SETTING": "${DEMO_BASE}/value", "DEMO_PLAIN": "plain", "DEMO_MISSING": "x${DEMO_NOT_SET}y"}
    config = write_config(tmp_path, deployment={"env": env})
    process_env = clean_env(token, DEMO_BASE="base")
    process_env.pop("DEMO_NOT_SET", None)
    transport = stdio_transport(token, str(config), env=process_env)
    texts = run_async(call_tools(transport, *[("getenv", {"name": name}) for name in env]))
    assert texts == ["base/value", "plain", "x${DEMO_NOT_SET}y"]  # an unset variable stays as written


def test_deployment_cwd_relative_to_config(token, tmp_path):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    source = os.path.relpath(SERVERS / "env_server.py", project)  # relative, and the cwd changes: still found
    config = write_config(project, source={"path": source}, deployment={"cwd": "data"})
    transport = stdio_transport(token, str(config), cwd=tmp_path)
    assert run_async(call_tools(transport, ("cwd", {}))) == [str((project / "data").resolve())]


def test_deployment_args_used_without_server_args(token, tmp_path):
    config = write_config(tmp_path, deployment={"args": ["--from", "config"]})
    assert run_async(call_tools(stdio_transport(token, str(config)), ("argv", {}))) == ["--from config"]
    given = stdio_transport(token, str(config), "--", "from", "cli")
    assert run_async(call_tools(given, ("argv", {}))) == ["from cli"]


def test_environment_is_checked_offline_and_installs_nothing(token, tmp_path):
    # Installers that leave a mark if anything runs them.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("uv", "uvx", "pip", "pip3"):
        (bin_dir / name).write_text(f"#!/bin/sh\necho {name} >> {tmp_path / 'ran'}\n")
        (bin_dir / name).chmod(0o755)
    env = clean_env(token, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = run_cli(token, "with_environment.json", cwd=CONFIGS, env=env, input="")
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(
        "mcprun: error: with_environment.json needs what this mcprun does not have: Python 3.12 (this is ")
    assert "pandas>=2 (not installed; with_environment.json)" in result.stderr
    assert ("on a connected machine run 'mcprun vendor with_environment.json --with \"pandas>=2\" --python-version "
            "3.11 -o DIR', then add --pythonpath DIR" in result.stderr)
    skipped = run_cli(token, "with_environment.json", "--skip-env", cwd=CONFIGS, env=env, input="")
    assert skipped.returncode == 0, skipped.stderr
    assert not (tmp_path / "ran").exists()


# -- --print-config and MCPRUN_* ------------------------------------------------


def test_print_config_precedence(token, tmp_path):
    deployment = {"transport": "sse", "port": 9100, "path": "/events", "env": {"API_KEY": "s3cret"}}
    config = write_config(tmp_path, deployment=deployment)
    env = clean_env(token, MCPRUN_TRANSPORT="stdio", MCPRUN_PORT="9200", MCPRUN_HOST="127.0.0.3",
                    MCPRUN_LOG_LEVEL="warning", MCPRUN_NO_BANNER="1", MCPRUN_AUTH_TOKEN="t0ken-s3cret",
                    MCPRUN_ALLOWED_HOST="a.example, b.example", MCPRUN_MAX_BODY="1MiB", MCPRUN_NO_ACCESS_LOG="1")
    result = run_cli(token, str(config), "--transport", "http", "--print-config", "--graceful-timeout", "2.5",
                     "--", "a", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    rows = [
        ("spec", f"{config}  (command line)"),
        ("transport", "http  (command line)"),
        ("host", "127.0.0.3  (MCPRUN_HOST)"),
        ("port", f"9100  ({config})"),
        ("path", f"/events  ({config})"),
        ("log_level", "WARNING  (MCPRUN_LOG_LEVEL)"),
        ("show_banner", "False  (MCPRUN_NO_BANNER)"),
        ("stateless", "False  (default)"),
        ("json_response", "False  (default)"),
        ("workers", "1  (default)"),
        ("reload", "False  (default)"),
        ("reload_dirs", "(server folder)  (default)"),
        ("skip_source", "False  (default)"),
        ("pythonpath", "(none)  (default)"),
        ("auth_token", "***  (MCPRUN_AUTH_TOKEN)"),
        ("auth_token_file", "None  (default)"),
        ("auth_jwks", "None  (default)"),
        ("auth_issuer", "None  (default)"),
        ("auth_resource", "None  (default)"),
        ("auth_audiences", "(none)  (default)"),
        ("auth_scopes", "(none)  (default)"),
        ("rate_limit", "None  (default)"),
        ("tools", "(none)  (default)"),
        ("exclude_tools", "(none)  (default)"),
        ("read_only", "False  (default)"),
        ("policy", "None  (default)"),
        ("resources", "(none)  (default)"),
        ("exclude_resources", "(none)  (default)"),
        ("prompts", "(none)  (default)"),
        ("exclude_prompts", "(none)  (default)"),
        ("audit_log", "None  (default)"),
        ("audit_arguments", "False  (default)"),
        ("audit_lists", "False  (default)"),
        ("metrics", "False  (default)"),
        ("metrics_path", "/metrics  (default)"),
        ("metrics_listen", "None  (default)"),
        ("otlp_endpoint", "None  (default)"),
        ("require_auth", "False  (default)"),
        ("tls_cert", "None  (default)"),
        ("tls_key", "None  (default)"),
        ("tls_key_password_file", "None  (default)"),
        ("tls_client_ca", "None  (default)"),
        ("allowed_hosts", "a.example, b.example  (MCPRUN_ALLOWED_HOST)"),
        ("allowed_origins", "(none)  (default)"),
        ("cors_origins", "(none)  (default)"),
        ("health_path", "/healthz  (default)"),
        ("ready_path", "/readyz  (default)"),
        ("graceful_timeout", "2.5  (command line)"),
        ("max_body", "1048576  (MCPRUN_MAX_BODY)"),
        ("max_connections", "1000  (default)"),
        ("read_timeout", "30.0  (default)"),
        ("max_sessions", "1000  (default)"),
        ("session_idle_timeout", "1800.0  (default)"),
        ("log_format", "text  (default)"),
        ("access_log", "False  (MCPRUN_NO_ACCESS_LOG)"),
        ("exit_on_upstream_failure", "False  (default)"),
        ("compat", "True  (default)"),
        ("with_packages", "(none)  (default)"),
        ("with_requirements", "None  (default)"),
        ("project", "None  (default)"),
        ("python", "None  (default)"),
        ("skip_env", "False  (default)"),
        ("allow_network", "False  (default)"),
        ("server_args", "a"),
        ("env.API_KEY", f"***  ({config})"),
        ("server", f"'Env' from {SERVERS / 'env_server.py'}: fastmcp 4 FastMCP"),
    ]
    width = max(len(name) for name, _ in rows)
    assert result.stdout == "".join(f"{name:<{width}} = {rest}\n" for name, rest in rows)
    assert "t0ken-s3cret" not in result.stdout
    assert "s3cret" not in result.stdout


def test_mcprun_environment_variables_serve(token):
    port = free_port()
    env = clean_env(token, MCPRUN_TRANSPORT="sse", MCPRUN_PORT=str(port), MCPRUN_LOG_LEVEL="WARNING")
    with started(token, "fastmcp_server.py", cwd=SERVERS, env=env) as server:
        assert server.url == f"http://127.0.0.1:{port}/sse"
        assert run_async(exercise_fastmcp(server.url)) == DEMO_RESULT
        assert "INFO" not in log_levels(server.stderr)


def test_flags_win_over_mcprun_environment_variables(token):
    env = clean_env(token, MCPRUN_TRANSPORT="sse", MCPRUN_PORT="1", MCPRUN_PATH="/env", MCPRUN_LOG_LEVEL="WARNING")
    with serving(token, "fastmcp_server.py", "--path", "/flag", "-l", "INFO", cwd=SERVERS, env=env) as server:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/flag", server.url)
        assert " over streamable HTTP at " in server.stderr
        assert run_async(exercise_fastmcp(server.url)) == DEMO_RESULT
        assert "INFO" in log_levels(server.stderr)


@pytest.mark.parametrize("variables, args, banner", [
    ({}, [], True),
    ({"MCPRUN_NO_BANNER": "1"}, [], False),
    ({"MCPRUN_NO_BANNER": "0"}, ["--no-banner"], False),
    ({"MCPRUN_LOG_LEVEL": "ERROR"}, [], False),  # the banner is an INFO-level line
    ({"MCPRUN_LOG_LEVEL": "ERROR"}, ["--log-level", "INFO"], True),
])
def test_banner_and_log_level_from_environment(token, variables, args, banner):
    result = run_cli(token, "fastmcp_server.py", *args, cwd=SERVERS, env=clean_env(token, **variables), input="")
    assert result.returncode == 0, result.stderr
    assert bool(BANNER.search(result.stderr)) is banner, result.stderr


def test_mcprun_transport_variable_over_stdio_default(token):
    env = clean_env(token, MCPRUN_TRANSPORT="stdio", MCPRUN_PORT="1")
    assert run_async(exercise_fastmcp(stdio_transport(token, "fastmcp_server.py", cwd=SERVERS, env=env))) == DEMO_RESULT


# -- mcp.json: a proxy to several servers ---------------------------------------


def write_mcp_json(tmp_path: Path, token: str, remote_url: str, name: str = "mcp.json") -> Path:
    """An mcp.json with a stdio server (mcprun itself on the demo) and a remote one by URL."""
    command = mcprun_command()
    servers = {
        "local": {"command": command[0], "args": [*command[1:], str(SERVERS / "fastmcp_server.py"), "--no-banner"],
                  "env": {TOKEN_VARIABLE: token}},
        "remote": {"url": remote_url},
    }
    path = tmp_path / name
    path.write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")
    return path


async def exercise_two_servers(target) -> dict:
    """List and call both servers' tools, resources and prompts through fastmcp's Client."""
    from fastmcp import Client

    async with Client(target) as client:
        return {
            "tools": sorted(tool.name for tool in await client.list_tools()),
            "local": (await client.call_tool("local_echo", {"text": "to local"})).content[0].text,
            "remote": (await client.call_tool("remote_echo", {"text": "to remote"})).content[0].text,
            "resources": sorted(str(r.uri) for r in await client.list_resources()),
            "greeting": (await client.read_resource("demo://remote/greeting"))[0].text,
            "prompt": (await client.get_prompt("local_summarize", {"topic": "tides"})).messages[0].content.text,
        }


TWO_SERVERS = {
    # fastmcp mounts each server under its name: tools and prompts get 'NAME_', resource URIs 'scheme://NAME/'
    "tools": ["local_argv", "local_echo", "remote_argv", "remote_echo"],
    "local": "to local",
    "remote": "to remote",
    "resources": ["demo://local/greeting", "demo://remote/greeting"],
    "greeting": "Hello from demo",
    "prompt": "Summarize tides briefly.",
}


@pytest.mark.parametrize("name", ["mcp.json", "claude_desktop_config.json"])  # told apart by 'mcpServers'
def test_mcp_json_two_servers_stdio(token, tmp_path, name):
    with serving(token, "sdk_server.py", cwd=SERVERS) as remote:
        config = write_mcp_json(tmp_path, token, remote.url, name)
        assert run_async(exercise_two_servers(stdio_transport(token, str(config), cwd=tmp_path))) == TWO_SERVERS


def test_mcp_json_servers_keep_their_process_from_one_request_to_the_next(token, tmp_path):
    command = mcprun_command()
    entry = {"command": command[0], "args": [*command[1:], str(SERVERS / "pid_server.py"), "--no-banner"],
             "env": {TOKEN_VARIABLE: token}}
    config = tmp_path / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {"one": entry, "two": entry}}))

    async def pids(target) -> list:
        from fastmcp import Client

        async with Client(target) as client:
            return [int((await client.call_tool(f"{name}_pid", {})).content[0].text)
                    for name in ("one", "two", "one", "two")]

    seen = run_async(pids(stdio_transport(token, str(config), cwd=tmp_path)))
    assert seen[0] == seen[2] and seen[1] == seen[3] and seen[0] != seen[1], seen


def test_mcp_json_two_servers_served_over_http(token, tmp_path):
    with serving(token, "sdk_server.py", transport="sse", cwd=SERVERS) as remote:
        config = write_mcp_json(tmp_path, token, remote.url)  # .../sse: fastmcp picks the SSE client
        with serving(token, str(config), cwd=tmp_path) as proxy:
            assert run_async(exercise_two_servers(proxy.url)) == TWO_SERVERS


# -- URL: a proxy to one remote server -------------------------------------------


@pytest.mark.parametrize("upstream", ["http", "sse"])
def test_url_proxy_stdio_by_default(token, upstream):
    with serving(token, "fastmcp_server.py", "upstream", transport=upstream, cwd=SERVERS) as remote:
        expected = {**DEMO_RESULT, "argv": "upstream"}  # the call ran in the remote server
        assert run_async(exercise_fastmcp(stdio_transport(token, remote.url))) == expected
        assert run_async(exercise_sdk("stdio", [remote.url], token)) == expected


@pytest.mark.parametrize("transport", ["http", "sse"])
def test_url_proxy_served_over_http(token, transport):
    with serving(token, "sdk_server.py", "upstream", cwd=SERVERS) as remote:
        with serving(token, remote.url, transport=transport) as proxy:
            expected = {**DEMO_RESULT, "argv": "upstream"}
            assert run_async(exercise_fastmcp(proxy.url)) == expected
            assert run_async(exercise_sdk(transport, proxy.url)) == expected
