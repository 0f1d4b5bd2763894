"""The deployment recipes in packaging/deploy/, tried as far as this machine allows, and the rules for replicas.

- systemd: `systemd-analyze verify` and `security --offline`, then each unit's ExecStart and Environment run as
  systemd would run them (NOTIFY_SOCKET, LISTEN_FDS from systemd-socket-activate); no systemd as PID 1 here.
- container: built and run by a container engine when one works; always reproduced in a chroot holding only
  the image's files, as uid 65534, on a read-only root with tmpfs on the writable folders.
- Kubernetes: every manifest parsed and validated against the Kubernetes schemas (kubernetes-validate, offline),
  and the Deployment's own arguments served; no cluster here.
- replicas: behind HAProxy running the shipped packaging/deploy/haproxy/haproxy.cfg: three `--stateless`
  mcprun, one draining and one killed, no call failing; two stateful ones, each session pinned to its replica.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from pathlib import Path

import httpx
import pytest
import yaml
from helpers import (INITIALIZE, INITIALIZED, ROOT, RunningServer, child_env, free_port, kill_token, mcprun_command,
                     run_async, sdk_session, serving, started, tools_call, wait_for)

DEPLOY = ROOT / "packaging" / "deploy"
SYSTEMD = DEPLOY / "systemd"
CONTAINER = DEPLOY / "container"
KUBERNETES = DEPLOY / "kubernetes"
BINARY = ROOT / "dist" / "mcprun"
TOKEN = "deploy-t0ken_0123456789abcdef"
SERVER = """\
import asyncio
import os

from fastmcp import FastMCP

mcp = FastMCP("Replica")


@mcp.tool
def whoami() -> str:
    \"\"\"The PID of the process that answered: tells replicas (and workers) apart.\"\"\"
    return str(os.getpid())


@mcp.tool
async def slow(seconds: float, started: str = "") -> str:
    if started:  # a file to create once the call runs: tells a test the call is in flight
        open(started, "w").close()
    await asyncio.sleep(seconds)
    return f"slept {seconds:g}"
"""


def binary_under_test() -> Path:
    """The single-file binary: MCPRUN_UNDER_TEST when it names one, else dist/mcprun."""
    command = mcprun_command()
    if len(command) == 1 and Path(command[0]).is_file() and Path(command[0]).read_bytes()[:4] == b"\x7fELF":
        return Path(command[0])
    if not BINARY.exists():
        pytest.skip("needs the binary: run ./build first (or MCPRUN_UNDER_TEST=dist/mcprun)")
    return BINARY


async def call_tool(url: str, tool: str, arguments: dict | None = None, auth: str | None = None) -> str:
    from fastmcp import Client

    async with Client(url, auth=auth) as client:
        return (await client.call_tool(tool, arguments or {})).content[0].text


def root_of(url: str) -> str:
    return url.rsplit("/", 1)[0]


@pytest.fixture
def server_file(tmp_path) -> Path:
    path = tmp_path / "server.py"
    path.write_text(SERVER)
    return path


# -- systemd ------------------------------------------------------------------


def unit_entries(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for each line of a unit file, continuation lines joined, in order."""
    entries, section, pending = [], "", ""
    for raw in path.read_text().splitlines():
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(path: Path, key: str) -> list[str]:
    return [value for _, name, value in unit_entries(path) if name == key]


def units_for_verify(tmp_path: Path) -> Path:
    """The unit files with ExecStart's /usr/local/bin/mcprun pointing at an executable that exists here.

    `systemd-analyze verify` checks that the command exists; only that path is changed.
    """
    executable = BINARY if BINARY.exists() else tmp_path / "mcprun-stand-in"
    if not executable.exists():
        executable.write_text("#!/bin/sh\nexit 0\n")
        executable.chmod(0o755)
    folder = tmp_path / "units"
    folder.mkdir()
    for unit in SYSTEMD.iterdir():
        (folder / unit.name).write_text(unit.read_text().replace("/usr/local/bin/mcprun", str(executable)))
    return folder


needs_systemd_analyze = pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="no systemd-analyze here")


@needs_systemd_analyze
@pytest.mark.parametrize("units", [["mcprun.service"], ["mcprun.socket", "mcprun-activated.service"]])
def test_systemd_units_verify_clean(tmp_path, units):
    folder = units_for_verify(tmp_path)
    # --man=no: Documentation=man:mcprun(1) names the man page dist/ ships, not installed on this machine.
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *(str(folder / unit) for unit in units)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""  # unknown keys and bad values are warnings: none allowed


@needs_systemd_analyze
def test_systemd_verify_catches_a_broken_unit(tmp_path):
    """The check above has teeth: a misspelt key and a socket naming no service are reported."""
    folder = units_for_verify(tmp_path)
    service = folder / "mcprun.service"
    service.write_text(service.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict"))
    socket_unit = folder / "mcprun.socket"
    socket_unit.write_text(socket_unit.read_text().replace("Service=mcprun-activated.service", "Service=no.service"))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(service), str(socket_unit)],
                            capture_output=True, text=True, timeout=120)
    assert "Unknown key 'ProtectSystm'" in result.stderr
    assert "no.service not loaded" in result.stderr


@needs_systemd_analyze
@pytest.mark.parametrize("unit", ["mcprun.service", "mcprun-activated.service"])
def test_systemd_service_hardening(tmp_path, unit):
    path = SYSTEMD / unit
    settings = {key: value for _, key, value in unit_entries(path)}
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "all"  # READY=1 may come from a process other than the main one
    for key, value in {"DynamicUser": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                       "NoNewPrivileges": "yes", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
                       "CacheDirectory": "mcprun", "KillSignal": "SIGTERM",
                       "LoadCredential": "token:/etc/mcprun/token"}.items():
        assert settings[key] == value, key
    environment = unit_values(path, "Environment")
    assert "MCPRUN_CACHE=%C/mcprun" in environment and "TMPDIR=/tmp" in environment
    command = shlex.split(settings["ExecStart"])
    assert command[0] == "/usr/local/bin/mcprun"
    assert "--auth-token-file" in command and "--require-auth" in command
    graceful = float(command[command.index("--graceful-timeout") + 1])
    assert int(settings["TimeoutStopSec"]) > graceful
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", str(units_for_verify(tmp_path) / unit)],
                            capture_output=True, text=True, timeout=120)
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert exposure, result.stdout + result.stderr
    assert float(exposure[1]) <= 2.0, result.stdout  # 1.4 "OK" when written; 10 is an unhardened unit


def systemd_command(unit: Path, server: Path, credentials: Path, cache: Path, port: int | None) -> tuple[list, dict]:
    """The unit's ExecStart and Environment, with what systemd would fill in filled in here.

    /usr/local/bin/mcprun becomes the mcprun under test, /srv/mcp/server.py the test server,
    ${CREDENTIALS_DIRECTORY} and %C folders here, port 8000 a free one, 0.0.0.0 loopback.
    """
    line = unit_values(unit, "ExecStart")[0].replace("${CREDENTIALS_DIRECTORY}", str(credentials))
    command = []
    for word in shlex.split(line):
        word = {"/usr/local/bin/mcprun": None, "/srv/mcp/server.py": str(server), "0.0.0.0": "127.0.0.1",
                "8000": str(port)}.get(word, word)
        command.extend(mcprun_command() if word is None else [word])
    environment = {}
    for assignment in unit_values(unit, "Environment"):
        name, _, value = assignment.partition("=")
        environment[name] = value.replace("%C", str(cache))
    return command, environment


class NotifySocket:
    """A NOTIFY_SOCKET as systemd provides it: a datagram socket that collects what the service sends."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(self.path)
        self.socket.settimeout(0.2)
        self.messages: list[str] = []

    def wait_for(self, word: str, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError, socket.timeout):
                self.messages.extend(self.socket.recv(4096).decode().split("\n"))
            if word in self.messages:
                return self.messages
        raise AssertionError(f"no {word} on NOTIFY_SOCKET in {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def systemd_folders(tmp_path):
    credentials, cache = tmp_path / "credentials", tmp_path / "cache"
    credentials.mkdir()
    cache.mkdir()
    (credentials / "token").write_text(TOKEN + "\n")
    notify = NotifySocket(tmp_path / "notify")
    yield credentials, cache, notify
    notify.close()


def test_systemd_service_runs_as_systemd_starts_it(token, tmp_path, server_file, systemd_folders):
    """mcprun.service's own command line and environment: READY=1, serving with the credential, STOPPING=1, exit 0."""
    credentials, cache, notify = systemd_folders
    command, environment = systemd_command(SYSTEMD / "mcprun.service", server_file, credentials, cache, free_port())
    env = child_env(token, **{**environment, "NOTIFY_SOCKET": notify.path, "TMPDIR": str(tmp_path)})
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    server = RunningServer(process)
    try:
        url = server.wait_ready()
        notify.wait_for("READY=1", 60)
        assert httpx.get(f"{root_of(url)}/readyz", timeout=10).status_code == 200
        assert run_async(call_tool(url, "whoami", auth=TOKEN)).isdigit()
        with pytest.raises(Exception):  # noqa: B017 - --require-auth with the credential: no token, no call
            run_async(call_tool(url, "whoami"))
        process.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1", 30)
        assert process.wait(30) == 0, server.stderr
    finally:
        server.stop()
        kill_token(token)
    assert TOKEN not in server.stderr


def test_systemd_socket_activation(token, tmp_path, server_file, systemd_folders):
    """mcprun.socket + mcprun-activated.service, with systemd's own systemd-socket-activate holding the port.

    The first client connects before mcprun runs: its connection waits in the socket's backlog, then is served.
    """
    activate = shutil.which("systemd-socket-activate")
    if not activate:
        pytest.skip("no systemd-socket-activate here")
    credentials, cache, notify = systemd_folders
    listen = unit_values(SYSTEMD / "mcprun.socket", "ListenStream")
    assert listen == ["8000"]
    port = free_port()
    command, environment = systemd_command(SYSTEMD / "mcprun-activated.service", server_file, credentials, cache,
                                           None)
    assert "--port" not in command and "--host" not in command  # the socket decides
    setenv = [f"--setenv={name}={value}" for name, value in
              {**environment, "TMPDIR": str(tmp_path), "NOTIFY_SOCKET": notify.path, "MCPRUN_TEST_TOKEN": token,
               "PATH": os.environ["PATH"]}.items()]
    process = subprocess.Popen([activate, f"--listen=127.0.0.1:{port}", *setenv, *command],
                               env=child_env(token), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    server = RunningServer(process)
    try:
        wait_for(lambda: not _port_free(port), timeout=10)  # systemd-socket-activate listens
        url = f"http://127.0.0.1:{port}/mcp"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=90).json() == {"status": "ok"}
        notify.wait_for("READY=1", 30)
        assert run_async(call_tool(url, "whoami", auth=TOKEN)).isdigit()
        process.send_signal(signal.SIGTERM)  # systemd-socket-activate execs mcprun in place: this is mcprun
        assert process.wait(30) == 0, server.stderr
        notify.wait_for("STOPPING=1", 5)
    finally:
        server.stop()
        kill_token(token)


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds: TIME_WAIT doesn't count
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- container ------------------------------------------------------------------


def containerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) for each instruction of the Containerfile, continuation lines joined."""
    instructions, pending = [], ""
    for raw in (CONTAINER / "Containerfile").read_text().splitlines():
        if raw.lstrip().startswith("#") and not pending:
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        if line:
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def instruction(name: str) -> list[str]:
    return [rest for word, rest in containerfile() if word == name]


def json_list(text: str) -> list[str]:
    return json.loads(text)


def image_env() -> dict:
    env = {}
    for line in instruction("ENV"):
        for assignment in shlex.split(line):
            name, _, value = assignment.partition("=")
            env[name] = value
    return env


def healthcheck_command() -> list[str]:
    line = instruction("HEALTHCHECK")[0]
    return json_list(line[line.index("CMD") + 3:].strip())


def test_containerfile_holds_only_the_binary_and_the_server():
    assert instruction("FROM") == ["scratch"]
    copies = [shlex.split(line) for line in instruction("COPY")]
    assert [copy[-2:] for copy in copies] == [["dist/mcprun", "/mcprun"], ["${SERVER}", "/srv/mcp/server.py"],
                                              ["packaging/deploy/container/rootfs/", "/"]]
    rootfs = sorted(str(path.relative_to(CONTAINER / "rootfs")) for path in (CONTAINER / "rootfs").rglob("*"))
    assert rootfs == ["tmp", "tmp/.keep", "var", "var/cache", "var/cache/mcprun", "var/cache/mcprun/.keep"]
    assert "--chown=65534:65534" in copies[2]
    assert instruction("USER") == ["65534:65534"]
    assert instruction("EXPOSE") == ["8000"]
    assert instruction("STOPSIGNAL") == ["SIGTERM"]
    assert image_env() == {"TMPDIR": "/tmp", "MCPRUN_CACHE": "/var/cache/mcprun"}
    assert healthcheck_command()[:2] == ["/mcprun", "-c"]
    assert json_list(instruction("ENTRYPOINT")[0]) == ["/mcprun"]
    ignored = (CONTAINER / "Containerfile.dockerignore").read_text()
    assert "!dist/mcprun" in ignored


def image_command(port: int) -> list[str]:
    """The image's CMD, on another port (the test's), the health check then pointed at it too."""
    return [str(port) if word == "8000" else word for word in json_list(instruction("CMD")[0])]


def health_code(port: int) -> str:
    return healthcheck_command()[2].replace(":8000/", f":{port}/")


def source_date_epoch() -> str:
    """The date reproducible builds use, as ./build sets it: SOURCE_DATE_EPOCH, else the last commit's."""
    committed = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=ROOT, capture_output=True, text=True)
    return os.environ.get("SOURCE_DATE_EPOCH") or committed.stdout.strip() or "315532800"


def working_engine() -> list[str] | None:
    """docker, else podman, when its daemon/runtime answers; None otherwise."""
    for engine in ("docker", "podman"):
        if shutil.which(engine):
            with contextlib.suppress(subprocess.TimeoutExpired):
                if subprocess.run([engine, "info"], capture_output=True, timeout=30).returncode == 0:
                    return [engine]
    return None


def test_container_image_built_and_run_by_an_engine(token, tmp_path):
    """docker or podman builds the Containerfile and runs it read-only with tmpfs on the writable folders;
    with podman, building it again from the same commit gives the same image ID."""
    engine = working_engine()
    if engine is None:
        pytest.skip("no container engine works here: 'docker info' finds no daemon and podman is not installed")
    binary = binary_under_test()
    if binary.resolve() != BINARY.resolve():
        pytest.skip("the Containerfile copies dist/mcprun")
    env = dict(os.environ)
    run_options = []
    if engine == ["podman"]:
        # For podman inside a container like this one: keep the engine's own limits (raising them is refused)
        # and use runc where installed (crun refuses a cgroup v1/v2 hybrid). Neither changes the image.
        conf = tmp_path / "containers.conf"
        conf.write_text("[containers]\ndefault_ulimits = []\n")
        env["CONTAINERS_CONF"] = str(conf)
        if shutil.which("runc"):
            run_options = ["--runtime", "runc"]
        tmpfs = ["--tmpfs", "/tmp:rw,exec,U", "--tmpfs", "/var/cache/mcprun:rw,exec,U"]
        # --timestamp: the image's dates and its files' are the commit's, so the same commit gives the same image.
        # --layers=false: no intermediate image is kept, so removing the tags leaves nothing behind.
        build_options = ["--ignorefile", str(CONTAINER / "Containerfile.dockerignore"), "--timestamp",
                         source_date_epoch(), "--layers=false"]
        run_format = ["--format", "docker"]
    else:
        tmpfs = ["--tmpfs", "/tmp:exec,mode=1777", "--tmpfs", "/var/cache/mcprun:exec,mode=1777"]
        build_options, run_format = [], []
    tag, name = f"mcprun-test-{token[:12]}", f"mcprun-test-{token[:12]}"
    oci, again = f"{tag}-oci", f"{tag}-oci-again"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o644)
    port = free_port()

    def build(*options: str) -> None:
        built = subprocess.run([*engine, "build", *build_options, *options, "-f", str(CONTAINER / "Containerfile"),
                                "--build-arg", "SERVER=examples/echo.py", "."], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=600)
        assert built.returncode == 0, built.stderr[-3000:]

    def inspect_image(image: str, field: str) -> str:
        return subprocess.run([*engine, "image", "inspect", "--format", "{{" + field + "}}", image], env=env,
                              capture_output=True, text=True, timeout=60).stdout.strip()

    try:
        build(*run_format, "-t", tag)
        if engine == ["podman"]:  # docker: not tried here (BuildKit wants SOURCE_DATE_EPOCH and rewrite-timestamp)
            # Reproducible: an OCI image built twice from the same commit, every step run again, has one ID.
            # Not the docker format: its config holds the build container's ID and host name, new each build;
            # its files (the one layer) are the same.
            build("--format", "oci", "-t", oci)
            build("--format", "oci", "--no-cache", "-t", again)
            assert inspect_image(again, ".Id") == inspect_image(oci, ".Id") != ""
            assert inspect_image(tag, ".RootFS.Layers") == inspect_image(oci, ".RootFS.Layers") != ""
        ran = subprocess.run([*engine, "run", "-d", *run_options, "--name", name, "-p", f"127.0.0.1:{port}:8000",
                              "--read-only", *tmpfs, "-v", f"{token_file}:/run/secrets/mcp-token:ro", tag],
                             env=env, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0, ran.stderr
        url = f"http://127.0.0.1:{port}/mcp"

        def healthy():
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
            return False

        wait_for(healthy, timeout=120, interval=0.5)
        assert run_async(call_tool(url, "add", {"a": 2, "b": 3}, auth=TOKEN)) == "5"
        # The HEALTHCHECK's own command, inside the container, as its user.
        check = subprocess.run([*engine, "exec", name, *healthcheck_command()], env=env, capture_output=True,
                               text=True, timeout=120)
        assert check.returncode == 0, check.stderr
        inspect = subprocess.run([*engine, "inspect", name, "--format", "{{.Config.User}} {{.Config.StopSignal}}"],
                                 env=env, capture_output=True, text=True, timeout=60)
        assert inspect.stdout.split()[:1] == ["65534:65534"]
        # What runs in it: the server as 65534 (its PID 1), on a root it cannot write.
        probe = ("import os; print(open('/proc/1/status').read().split('Uid:')[1].split()[0]);"
                 " open('/written', 'w')")
        inside = subprocess.run([*engine, "exec", name, "/mcprun", "-c", probe], env=env, capture_output=True,
                                text=True, timeout=120)
        assert inside.stdout.split() == ["65534"], inside.stdout + inside.stderr
        assert "Read-only file system" in inside.stderr, inside.stderr
        stopped = subprocess.run([*engine, "stop", "-t", "30", name], env=env, capture_output=True, timeout=120)
        assert stopped.returncode == 0
        code = subprocess.run([*engine, "inspect", name, "--format", "{{.State.ExitCode}}"], env=env,
                              capture_output=True, text=True, timeout=60).stdout.strip()
        logs = subprocess.run([*engine, "logs", name], env=env, capture_output=True, text=True, timeout=60)
        assert code == "0", logs.stdout + logs.stderr
        assert "Traceback" not in logs.stderr
    finally:
        subprocess.run([*engine, "rm", "-f", name], env=env, capture_output=True, timeout=120)
        subprocess.run([*engine, "rmi", "-f", tag, oci, again], env=env, capture_output=True, timeout=120)


JAIL_SCRIPT = """\
set -e
jail=$1; shift
mount --bind "$jail" "$jail"
mount -o remount,bind,ro "$jail"
mount -t tmpfs -o mode=1777 tmpfs "$jail/tmp"
mount -t tmpfs -o mode=0755,uid=65534,gid=65534 tmpfs "$jail/var/cache/mcprun"
mount -t proc proc "$jail/proc"
exec chroot --userspec=65534:65534 "$jail" "$@"
"""


def test_container_conditions_without_an_engine(token, tmp_path):
    """The image, reproduced: a root holding only the binary, the server and the image's folders, read-only,
    tmpfs on /tmp and the cache, only /proc mounted, uid 65534, the image's ENV; serving, health check working."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.skip("needs root, unshare and nsenter to build the jail")
    binary = binary_under_test()
    jail = tmp_path / "jail"
    shutil.copytree(CONTAINER / "rootfs", jail)
    for folder in ("proc", "srv/mcp", "run/secrets"):
        (jail / folder).mkdir(parents=True)
    shutil.copy2(binary, jail / "mcprun")
    (jail / "mcprun").chmod(0o555)
    shutil.copy(ROOT / "examples" / "echo.py", jail / "srv" / "mcp" / "server.py")
    (jail / "run" / "secrets" / "mcp-token").write_text(TOKEN + "\n")
    (jail / "run" / "secrets" / "mcp-token").chmod(0o444)
    os.chmod(tmp_path, 0o755)
    port = free_port()
    env = {**image_env(), "MCPRUN_TEST_TOKEN": token}
    process = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "--propagation", "private",
                                "sh", "-c", JAIL_SCRIPT, "jail", str(jail), "/mcprun", *image_command(port)],
                               env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    server = RunningServer(process)
    try:
        url = server.wait_ready(120)
        assert url == f"http://127.0.0.1:{port}/mcp"
        assert run_async(call_tool(url, "add", {"a": 2, "b": 3}, auth=TOKEN)) == "5"
        # The HEALTHCHECK command, in the jail's mounts and root, as uid 65534, with the image's ENV.
        served = wait_for(lambda: [pid for pid in _pids_of(token) if os.readlink(f"/proc/{pid}/root") != "/"])
        check = subprocess.run(["nsenter", f"--target={served[0]}", "--mount", "--pid", "--root", "--wd=/",
                                "--setuid=65534", "--setgid=65534", "/mcprun", "-c", health_code(port)],
                               env={**image_env(), "MCPRUN_TEST_TOKEN": token}, capture_output=True, text=True,
                               timeout=120)
        assert check.returncode == 0, check.stderr
        broken = subprocess.run(["nsenter", f"--target={served[0]}", "--mount", "--pid", "--root", "--wd=/",
                                 "--setuid=65534", "--setgid=65534", "/mcprun", "-c",
                                 health_code(port).replace("/healthz", "/nowhere")],
                                env={**image_env(), "MCPRUN_TEST_TOKEN": token}, capture_output=True, text=True,
                                timeout=120)
        assert broken.returncode == 1  # a failing probe is an unhealthy container
        uids = {Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0] for pid in served}
        assert uids == {"65534"}
        # What `docker stop` does: SIGTERM to the container's PID 1, the binary (unshare forwards no signal).
        [first] = [pid for pid in served if _namespace_pid(pid) == 1]
        os.kill(first, signal.SIGTERM)
        assert process.wait(60) == 0, server.stderr
    finally:
        server.stop()
        kill_token(token)
    assert "Traceback" not in server.stderr
    assert sorted(p.name for p in jail.iterdir()) == ["mcprun", "proc", "run", "srv", "tmp", "var"]


def _namespace_pid(pid: int) -> int:
    """pid as its own PID namespace numbers it."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("NSpid:")[1].splitlines()[0].split()[-1])


def _pids_of(token: str) -> list[int]:
    from helpers import pids_with_token

    return pids_with_token(token)


# -- Kubernetes -----------------------------------------------------------------


def manifests() -> list[tuple[str, dict]]:
    documents = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        documents.extend((path.name, document) for document in yaml.safe_load_all(path.read_text()) if document)
    return documents


def resource(kind: str, name: str = "mcprun") -> dict:
    [found] = [document for _, document in manifests()
               if document["kind"] == kind and document["metadata"]["name"] == name]
    return found


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_manifests_validate_against_the_kubernetes_schemas(version):
    """Every manifest, strict (unknown fields are errors), against the schemas kubernetes-validate bundles."""
    import kubernetes_validate

    checked = []
    for name, document in manifests():
        if document["kind"] == "Kustomization":
            continue
        kubernetes_validate.validate(document, version, strict=True)
        checked.append(f"{name}:{document['kind']}")
    assert sorted(checked) == ["deployment.yaml:Deployment", "hpa.yaml:HorizontalPodAutoscaler",
                               "service.yaml:Service", "stateful-affinity.yaml:Ingress",
                               "stateful-affinity.yaml:Service"]
    broken = resource("Deployment")
    broken = yaml.safe_load(yaml.safe_dump(broken).replace("readOnlyRootFilesystem", "readOnlyRootFileSystem"))
    with pytest.raises(kubernetes_validate.ValidationError):  # the validation has teeth
        kubernetes_validate.validate(broken, version, strict=True)


def test_kustomization_lists_the_stateless_recipe():
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    assert kustomization["resources"] == ["deployment.yaml", "service.yaml", "hpa.yaml"]


def test_deployment_follows_the_rules():
    deployment = resource("Deployment")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    args = container["args"]
    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    for flag in ("--transport=http", "--host=0.0.0.0", "--stateless", "--workers=auto", "--require-auth"):
        assert flag in args
    graceful = float(next(arg for arg in args if arg.startswith("--graceful-timeout=")).split("=")[1])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > pre_stop + graceful
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65534
    env = {item["name"]: item["value"] for item in container["env"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for variable in ("TMPDIR", "MCPRUN_CACHE"):
        assert "emptyDir" in volumes[mounts[env[variable]]], variable
    token_file = next(arg for arg in args if arg.startswith("--auth-token-file=")).split("=")[1]
    assert volumes[mounts[str(Path(token_file).parent)]]["secret"]["secretName"] == "mcprun-token"
    service, hpa = resource("Service"), resource("HorizontalPodAutoscaler")
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] in [port["name"] for port in container["ports"]]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mcprun"}
    assert hpa["spec"]["minReplicas"] == spec["replicas"]
    sticky = resource("Service", "mcprun-sticky")
    assert sticky["spec"]["sessionAffinity"] == "ClientIP"


def test_deployment_arguments_serve(token, tmp_path, server_file):
    """The Deployment's own args run: stateless, workers auto, token file, the probes' routes."""
    [container] = resource("Deployment")["spec"]["template"]["spec"]["containers"]
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    args = []
    for arg in container["args"]:
        arg = arg.replace("/srv/mcp/server.py", str(server_file)).replace("--host=0.0.0.0", "--host=127.0.0.1")
        arg = arg.replace("--port=8000", "--port=0").replace("/run/secrets/mcp/token", str(token_file))
        args.append(arg)
    env = child_env(token, **{item["name"]: item["value"] for item in container["env"]})
    env.update(TMPDIR=str(tmp_path), MCPRUN_CACHE=str(tmp_path / "cache"))
    with started(token, *args, env=env) as server:
        root = root_of(server.url)
        assert httpx.get(f"{root}/healthz", timeout=10).status_code == 200
        assert httpx.get(f"{root}/readyz", timeout=10).status_code == 200
        assert run_async(call_tool(server.url, "whoami", auth=TOKEN)).isdigit()


# -- replicas behind a load balancer --------------------------------------------------------

HAPROXY_CONFIG = DEPLOY / "haproxy" / "haproxy.cfg"
NGINX_TEMPLATE = DEPLOY / "nginx" / "mcprun.conf.template"
SERVED = re.compile(r" mcp mcprun/(?P<server>\S+) \S+ (?P<status>\d{3}) ")  # haproxy's option httplog line
NGINX_MAIN = """\
daemon off;
master_process off;
pid nginx.pid;
error_log stderr warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path body;
    proxy_temp_path proxy;
    fastcgi_temp_path fastcgi;
    uwsgi_temp_path uwsgi;
    scgi_temp_path scgi;
    include conf.d/*.conf;
}}
"""  # stands in for /etc/nginx/nginx.conf, whose http block includes conf.d/*.conf: in one process, files here


def program(name: str) -> str:
    """The installed program, looked for in the sbin folders too; skip the test when it is missing."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if not found:
        pytest.skip(f"{name} is not installed (apt-get install {name}, as .ci/run does)")
    return found


def balancer_env(token: str, port: int, replicas: list[RunningServer]) -> dict:
    """The environment the shipped configurations read: MCPRUN_LISTEN, MCPRUN_BACKEND_1, _2, _3 in order."""
    return child_env(token, MCPRUN_LISTEN=f"127.0.0.1:{port}",
                     **{f"MCPRUN_BACKEND_{n}": urllib.parse.urlsplit(replica.url).netloc
                        for n, replica in enumerate(replicas, 1)})


class Balancer:
    """A load balancer in front of replicas, running a shipped configuration unmodified; its log collected."""

    def __init__(self, command: list[str], env: dict, port: int) -> None:
        self.port = port
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.log = RunningServer(self.process)  # for its stderr, collected as it comes
        wait_for(lambda: self.process.poll() is not None or not _port_free(port), timeout=30,
                 what=f"{command[0]} listening")
        assert self.process.poll() is None, self.log.stderr

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self.log.stop()

    def down(self, index: int) -> bool:
        """True once the balancer has left replica index out, as its log says."""
        raise NotImplementedError

    def wait_down(self, index: int, load=None) -> None:
        """Until the balancer has left the replica out; at once, with its error, if the calls of load (a
        Future) have stopped meanwhile."""
        name = Path(self.process.args[0]).name
        try:
            wait_for(lambda: self.down(index) or (load is not None and load.done()), timeout=30)
        except AssertionError:
            raise AssertionError(f"{name} did not leave replica {index + 1} out; its log:\n{self.log.stderr}")
        if load is not None and load.done():
            raise AssertionError(f"a call through {name} failed: {load.exception()!r}; its log:\n{self.log.stderr}")


class HAProxy(Balancer):
    """haproxy running packaging/deploy/haproxy/haproxy.cfg (servers mcprun1, mcprun2, mcprun3)."""

    def __init__(self, token: str, replicas: list[RunningServer], tmp_path: Path) -> None:
        haproxy, port = program("haproxy"), free_port()
        env = balancer_env(token, port, replicas)
        checked = subprocess.run([haproxy, "-c", "-f", str(HAPROXY_CONFIG)], env=env, capture_output=True,
                                 text=True, timeout=30)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        super().__init__([haproxy, "-db", "-f", str(HAPROXY_CONFIG)], env, port)

    def served(self) -> list[tuple[str, int]]:
        """(server, status) of each request haproxy passed on, as it logged them."""
        return [(match["server"], int(match["status"])) for line in self.log.lines if (match := SERVED.search(line))]

    def down(self, index: int) -> bool:
        """True once haproxy's health check has taken the replica out."""
        return f"Server mcprun/mcprun{index + 1} is DOWN" in self.log.stderr


class Nginx(Balancer):
    """nginx running packaging/deploy/nginx/mcprun.conf.template, made a conf.d file by envsubst."""

    def __init__(self, token: str, replicas: list[RunningServer], tmp_path: Path) -> None:
        nginx, envsubst, port = program("nginx"), program("envsubst"), free_port()
        env = balancer_env(token, port, replicas)
        self.addresses = [urllib.parse.urlsplit(replica.url).netloc for replica in replicas]
        folder = tmp_path / "nginx"
        (folder / "conf.d").mkdir(parents=True)
        names = " ".join(f"${name}" for name in env if name.startswith("MCPRUN_"))  # only these: not $host
        filled = subprocess.run([envsubst, names], input=NGINX_TEMPLATE.read_text(), env=env, capture_output=True,
                                text=True, timeout=30, check=True).stdout
        (folder / "conf.d" / "mcprun.conf").write_text(filled)
        (folder / "nginx.conf").write_text(NGINX_MAIN.format())
        command = [nginx, "-p", f"{folder}/", "-c", str(folder / "nginx.conf"), "-e", "stderr"]
        checked = subprocess.run([*command, "-t"], env=env, capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr
        super().__init__(command, env, port)

    def down(self, index: int) -> bool:
        """True once nginx has found the replica refusing connections and left it out."""
        upstream = f'upstream: "http://{self.addresses[index]}/'
        return any("upstream server temporarily disabled" in line and upstream in line for line in self.log.lines)


@contextlib.contextmanager
def balancing(kind: type[Balancer], token: str, replicas: list[RunningServer], tmp_path: Path):
    balancer = kind(token, replicas, tmp_path)
    try:
        yield balancer
    finally:
        balancer.close()


async def calls_through(url: str, count: int) -> list[str]:
    """count calls of whoami from ONE client session; the PIDs that answered."""
    from fastmcp import Client

    async with Client(url) as client:
        return [(await client.call_tool("whoami", {})).content[0].text for _ in range(count)]


async def calls_until(url: str, stop: threading.Event, answers: list[str]) -> None:
    """Call whoami from one client session, one call after the other, until stop is set; a failed call raises."""
    from fastmcp import Client

    async with Client(url) as client:
        while not stop.is_set():
            answers.append((await client.call_tool("whoami", {})).content[0].text)


@pytest.mark.parametrize("kind", [HAProxy, Nginx], ids=["haproxy", "nginx"])
def test_stateless_replicas_behind_a_balancer_one_draining_one_killed(token, tmp_path, server_file, kind):
    """The rules for replicas, with HAProxy or nginx running the shipped configuration: with --stateless any
    replica answers any call of one client session; a replica that gets SIGTERM answers /readyz 503 and
    closes its port, the balancer takes it out (HAProxy: its check; nginx: a refused connection), the call it
    was running finishes, and no call through the balancer fails meanwhile; a replica killed with SIGKILL
    refuses connections, and the balancer sends the calls elsewhere."""
    from concurrent.futures import ThreadPoolExecutor

    with contextlib.ExitStack() as stack:
        replicas = [stack.enter_context(serving(token, str(server_file), "--stateless", "--graceful-timeout", "20",
                                                cwd=tmp_path)) for _ in range(3)]
        pids = [run_async(call_tool(replica.url, "whoami")) for replica in replicas]
        balancer = stack.enter_context(balancing(kind, token, replicas, tmp_path))
        assert set(run_async(calls_through(balancer.url, 9))) == set(pids)  # one client session, all three

        (draining, killed, staying), stop, answers = replicas, threading.Event(), []
        pool = stack.enter_context(ThreadPoolExecutor(2))
        stack.callback(stop.set)
        load = pool.submit(run_async, calls_until(balancer.url, stop, answers), 120)
        started = tmp_path / "slow-started"
        in_flight = pool.submit(run_async, call_tool(draining.url, "slow", {"seconds": 3, "started": str(started)}))
        wait_for(lambda: load.done() or started.exists() and len(answers) >= 3, timeout=30,
                 what="the slow call and calls running")
        with httpx.Client(timeout=10) as keep_alive:  # a balancer's open connection sees the drain
            assert keep_alive.get(f"{root_of(draining.url)}/readyz").status_code == 200
            draining.process.send_signal(signal.SIGTERM)
            wait_for(lambda: keep_alive.get(f"{root_of(draining.url)}/readyz").status_code == 503, timeout=5)
            assert keep_alive.get(f"{root_of(draining.url)}/readyz").json() == {"status": "stopping"}
        balancer.wait_down(0, load)
        assert in_flight.result(30) == "slept 3"
        assert draining.process.wait(30) == 0, draining.stderr
        since = len(answers)
        wait_for(lambda: load.done() or len(answers) >= since + 5, timeout=30, what="calls after the drain")
        stop.set()
        assert load.exception(60) is None, balancer.log.stderr  # not one call failed
        assert set(answers[since:]) <= set(pids[1:]), answers[since:]

        # SIGKILL, no call in flight: its connections are refused, the balancer sends them to another replica
        # (HAProxy until its check takes it out). A call running on a replica that dies is lost: neither
        # balancer sends it again (the tool may have run).
        killed.process.kill()
        killed.process.wait(10)
        assert set(run_async(calls_through(balancer.url, 6))) == {pids[2]}
        balancer.wait_down(1)
        assert set(run_async(calls_through(balancer.url, 3))) == {pids[2]}
    assert "Traceback" not in staying.stderr


async def session_calls(url: str, count: int) -> list[str]:
    """count calls of whoami in ONE session of the official SDK's client (initialize, the event stream, the
    calls, DELETE); the PIDs that answered. fastmcp's Client needs no session: it sends server/discover."""
    async with sdk_session("http", url) as session:
        return [(await session.call_tool("whoami", {})).content[0].text for _ in range(count)]


def mcp_post(client: httpx.Client, url: str, message: dict, session: str | None = None) -> httpx.Response:
    """POST one JSON-RPC message as a streamable-HTTP client does, in session when given."""
    headers = {"accept": "application/json, text/event-stream", "mcp-protocol-version": "2025-06-18"}
    return client.post(url, json=message, headers={**headers, "mcp-session-id": session} if session else headers)


def tool_text(response: httpx.Response) -> str:
    """The text a tools/call answered, from a JSON or an event-stream response."""
    assert response.status_code == 200, response.text
    body = response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        body = [line[5:] for line in body.splitlines() if line.startswith("data:")][-1]
    return json.loads(body)["result"]["content"][0]["text"]


def test_stateful_sessions_pinned_by_haproxy_and_a_lost_one_starts_over(token, tmp_path, server_file):
    """Stateful mode behind the shipped haproxy.cfg: HAProxy learns each session's id from the response that
    created it (stick store-response) and sends every request carrying it to that replica (stick match); a
    session whose replica was killed gets 404 from the next replica, and a new initialize works."""
    with contextlib.ExitStack() as stack:
        replicas = [stack.enter_context(serving(token, str(server_file), cwd=tmp_path)) for _ in range(2)]
        replica_of = {run_async(call_tool(replica.url, "whoami")): replica for replica in replicas}
        balancer = stack.enter_context(balancing(HAProxy, token, replicas, tmp_path))  # MCPRUN_BACKEND_3 unset
        sessions = [run_async(session_calls(balancer.url, 5)) for _ in range(4)]
        assert all(len(set(session)) == 1 for session in sessions), sessions  # each on the replica that created it
        assert {session[0] for session in sessions} == set(replica_of), sessions  # new sessions on both
        assert {server for server, _ in balancer.served()} == {"mcprun1", "mcprun2"}

        with httpx.Client(timeout=30) as http:
            opened = mcp_post(http, balancer.url, INITIALIZE)
            assert opened.status_code == 200, opened.text
            session = opened.headers["mcp-session-id"]
            assert mcp_post(http, balancer.url, INITIALIZED, session).status_code == 202
            pid = tool_text(mcp_post(http, balancer.url, tools_call(2, "whoami", {}), session))
            [left] = [other for other in replica_of if other != pid]
            replica_of[pid].process.kill()
            replica_of[pid].process.wait(10)
            lost = mcp_post(http, balancer.url, tools_call(3, "whoami", {}), session)
            assert lost.status_code == 404, lost.text  # the replica left knows no such session
            server_left = f"mcprun{replicas.index(replica_of[left]) + 1}"
            wait_for(lambda: (server_left, 404) in balancer.served(), timeout=10, what="haproxy logging the 404")
            reopened = mcp_post(http, balancer.url, INITIALIZE)  # the client starts over
            assert reopened.status_code == 200, reopened.text
            renewed = reopened.headers["mcp-session-id"]
            assert renewed != session
            assert mcp_post(http, balancer.url, INITIALIZED, renewed).status_code == 202
            assert tool_text(mcp_post(http, balancer.url, tools_call(4, "whoami", {}), renewed)) == left
        assert set(run_async(session_calls(balancer.url, 3))) == {left}
