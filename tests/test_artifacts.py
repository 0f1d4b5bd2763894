"""The built artifacts in the places users put them: dist/mcprun.pyz, dist/mcprun, dist/mcprun.1.

Built by ./build; these tests skip (saying so) when dist/ has not been built.
"""

import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import INITIALIZE, INITIALIZED, ROOT, SERVERS, child_env, stdio_exchange, tools_call, wait_for

DIST = ROOT / "dist"
PYZ = DIST / "mcprun.pyz"
BINARY = DIST / "mcprun"
MANPAGE = DIST / "mcprun.1"
PYENV = Path.home() / ".pyenv" / "versions"
EXCHANGE = [INITIALIZE, INITIALIZED, tools_call(2, "echo", {"text": "packed"})]
needs_pyz = pytest.mark.skipif(not PYZ.exists(), reason="run ./build first")
# These check the artifacts themselves; ./build test runs them in its first pass (the source).
pytestmark = pytest.mark.skipif(bool(os.environ.get("MCPRUN_UNDER_TEST")),
                                reason="artifact checks run once, in the pass on the source")
needs_binary = pytest.mark.skipif(not BINARY.exists(), reason="run ./build first")


def pyenv_python(version: str) -> str | None:
    """Return pyenv's python for a minor version, or the system one if it matches, else None."""
    for folder in sorted(PYENV.glob(f"{version}.*"), reverse=True):
        if (folder / "bin" / "python3").exists():
            return str(folder / "bin" / "python3")
    found = shutil.which(f"python{version}")
    return found


def assert_served(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr
    replies = [json.loads(line) for line in result.stdout.splitlines()]
    assert replies[-1]["result"]["content"][0]["text"] == "packed"
    assert "Traceback" not in result.stderr


@pytest.fixture
def public_tmp():
    """A folder another user can reach (pytest's own tmp_path is private to root)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="mcprun-test-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    subprocess.run(["chmod", "-R", "u+w", str(folder)], check=False)
    shutil.rmtree(folder, ignore_errors=True)


def as_nobody(*command: str) -> list[str]:
    """Run command as user nobody, with the system Python (pyenv's lives under /root)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop to another user")
    if command[0] == sys.executable:
        system_python = "/usr/bin/python3"
        version = subprocess.run([system_python, "-c", "import sys; print(sys.version_info >= (3, 11))"],
                                 capture_output=True, text=True).stdout.strip() if os.path.exists(system_python) else ""
        if version != "True":
            pytest.skip("no system python3 >= 3.11 that user nobody can run")
        command = (system_python, *command[1:])
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the build ----------------------------------------------------------------


@needs_pyz
def test_sha256sums_match():
    result = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=DIST, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    built = [name for name in ("mcprun-aarch64", "mcprun-aarch64.pyz") if (DIST / name).exists()]
    assert sorted(line.split()[1] for line in (DIST / "SHA256SUMS").read_text().splitlines()) == sorted([
        "mcprun", "mcprun.1", "mcprun.pyz", *built])


def test_artifacts_rebuild_byte_identical(tmp_path):
    """Build the zipapp, the binary and the man page again, and the aarch64 pair when dist/ has it; compare
    SHA-256 with dist/. The aarch64 binary is assembled from the one-folder build that the binary's rebuild
    freezes anew, with the arm64 packages of build-cache/root-aarch64 (the archive's of the day it was made).

    When dist/ was built from other inputs (its stamps differ), a second build is the reference.
    """
    epoch = subprocess.run(["git", "log", "-1", "--format=%ct"], cwd=ROOT, capture_output=True, text=True).stdout
    artifacts, targets = ["mcprun.pyz", "mcprun", "mcprun.1"], "pyz binary manpage"
    if (DIST / "mcprun-aarch64.pyz").exists():
        artifacts, targets = [*artifacts, "mcprun-aarch64.pyz"], targets + " pyz-aarch64"
    if (DIST / "mcprun-aarch64").exists():
        artifacts, targets = [*artifacts, "mcprun-aarch64"], targets + " binary-aarch64"

    def build(folder: Path) -> Path:
        env = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", epoch.strip()),
               "DIST": str(folder), "BUILD_ONLY": targets}
        result = subprocess.run(["./build"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        return folder

    rebuilt = build(tmp_path / "rebuilt")
    stamps = [f".{name}.stamp" for name in artifacts]
    same_inputs = all((DIST / stamp).exists() and (DIST / stamp).read_text() == (rebuilt / stamp).read_text()
                      for stamp in stamps)
    reference = DIST if same_inputs else build(tmp_path / "reference")
    for artifact in artifacts:
        assert sha256(rebuilt / artifact) == sha256(reference / artifact), artifact


def test_the_zipapp_bootstrap_names_the_artifacts_as_mcprun_does():
    """packaging/pyz_main.py runs before mcprun can be imported, so it has its own copy of the naming rule."""
    tree = ast.parse((ROOT / "packaging" / "pyz_main.py").read_text())
    function = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "artifact")
    namespace: dict = {}
    exec(compile(ast.Module([function], []), "pyz_main.py", "exec"), namespace)
    sys.path.insert(0, str(ROOT))
    import mcprun

    for machine in ("x86_64", "aarch64", "riscv64"):
        assert namespace["artifact"](machine) == mcprun.artifact_name(machine)


@needs_pyz
def test_manpage_has_every_long_option_and_the_sections():
    text = MANPAGE.read_text()
    sys.path.insert(0, str(ROOT))
    import mcprun

    for action in mcprun.build_parser()._actions:
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                assert option.replace("-", r"\-") in text or option in text, option
    for section in ("EXAMPLES", "ENVIRONMENT", "EXIT STATUS"):
        assert f".SH {section}" in text


# -- the zipapp ---------------------------------------------------------------


@needs_pyz
@pytest.mark.parametrize("version", ["3.11", "3.12", "3.13"])
def test_pyz_serves_on_each_python(token, tmp_path, version):
    python = pyenv_python(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine")
    env = child_env(token, SHIV_ROOT=str(tmp_path / "cache"))
    assert_served(stdio_exchange([python, str(PYZ), "fastmcp_server.py"], EXCHANGE, token, cwd=SERVERS, env=env))


@needs_pyz
@pytest.mark.parametrize("version", ["3.9", "3.10"])
def test_pyz_on_an_unsupported_python_says_so_in_one_line(token, tmp_path, version):
    python = pyenv_python(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine")
    result = subprocess.run([python, str(PYZ), "--version"], capture_output=True, text=True, timeout=60,
                            env=child_env(token, SHIV_ROOT=str(tmp_path)))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("mcprun: error: mcprun.pyz runs on CPython 3.11, 3.12, 3.13")
    assert "mcprun binary" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing unpacked


@needs_pyz
@pytest.mark.parametrize("home", ["unset", "read-only", "missing"])
def test_pyz_without_a_usable_home(token, public_tmp, home):
    tmp_path = public_tmp
    env = child_env(token, TMPDIR=str(tmp_path))
    env.pop("SHIV_ROOT", None)
    env.pop("XDG_CACHE_HOME", None)
    if home == "unset":
        env.pop("HOME")
    elif home == "read-only":
        (tmp_path / "home").mkdir(mode=0o555)
        env["HOME"] = str(tmp_path / "home")
    else:
        env["HOME"] = str(tmp_path / "no" / "such" / "home")
    command = [sys.executable, str(PYZ), "fastmcp_server.py"]
    if home == "read-only":
        command = as_nobody(*command)
        os.chmod(tmp_path, 0o777)
    result = stdio_exchange(command, EXCHANGE, token, cwd=SERVERS, env=env)
    assert_served(result)
    if home == "read-only":
        assert list(tmp_path.glob("mcprun-*/mcprun_*/site-packages"))  # fell back to $TMPDIR/mcprun-UID


@needs_pyz
def test_pyz_with_a_read_only_shiv_root_and_no_copy_says_what_to_set(token, public_tmp):
    root = public_tmp / "cache"
    root.mkdir(mode=0o555)
    result = subprocess.run(as_nobody(sys.executable, str(PYZ), "--version"), capture_output=True, text=True,
                            timeout=120,
                            env=child_env(token, SHIV_ROOT=str(root)))
    assert result.returncode == 1
    assert result.stderr == (f"mcprun: error: SHIV_ROOT={root} is not writable and holds no unpacked copy of "
                             "this build; point SHIV_ROOT at a writable folder\n")


@needs_pyz
def test_pyz_shared_read_only_cache_serves_another_user_from_another_cwd(token, public_tmp):
    tmp_path = public_tmp
    command = as_nobody(sys.executable, str(PYZ))
    cache = tmp_path / "cache"
    warmed = subprocess.run([command[-2], str(PYZ), "--version"], capture_output=True, text=True, timeout=300,
                            env=child_env(token, SHIV_ROOT=str(cache)))
    assert warmed.returncode == 0, warmed.stderr
    subprocess.run(["chmod", "-R", "a-w", str(cache)], check=True)
    workdir = tmp_path / "readonly-cwd"
    workdir.mkdir()
    shutil.copy(SERVERS / "demo.py", workdir)
    shutil.copy(SERVERS / "fastmcp_server.py", workdir)
    subprocess.run(["chmod", "-R", "a-w", str(workdir)], check=True)
    command = [*command, str(workdir / "fastmcp_server.py")]
    assert_served(stdio_exchange(command, EXCHANGE, token, cwd="/", env=child_env(token, SHIV_ROOT=str(cache))))


@needs_pyz
def test_pyz_cleans_other_builds_unless_in_use_or_started_lately(token, tmp_path):
    import fcntl

    root = tmp_path / "cache"
    builds = {name: root / ("mcprun_" + letter * 64) for name, letter in
              (("unmarked", "a"), ("busy", "b"), ("unused", "c"), ("recent", "d"))}
    for folder in builds.values():
        (folder / "site-packages").mkdir(parents=True)
    marker = {name: root / (".mcprun_" + folder.name[len("mcprun_"):] + ".in-use") for name, folder in builds.items()}
    for name in ("busy", "unused", "recent"):
        marker[name].touch()
    two_days_ago = time.time() - 2 * 24 * 3600
    for name in ("busy", "unused"):
        os.utime(marker[name], (two_days_ago, two_days_ago))
    holder = os.open(marker["busy"], os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_SH)  # another mcprun still runs that build
    try:
        result = subprocess.run([sys.executable, str(PYZ), "--version"], capture_output=True, text=True,
                                timeout=300, env=child_env(token, SHIV_ROOT=str(root)))
    finally:
        os.close(holder)
    assert result.returncode == 0, result.stderr
    assert not builds["unmarked"].exists() and not builds["unused"].exists() and not marker["unused"].exists()
    assert builds["busy"].exists()
    assert builds["recent"].exists()  # started an hour ago, say: another version used by turns keeps its folder
    [ours] = set(root.glob("mcprun_*")) - set(builds.values())
    assert time.time() - (root / f".{ours.name}.in-use").stat().st_mtime < 600  # this start marked its own


@needs_pyz
def test_pyz_pythonpath_cannot_shadow_the_bundle(token, tmp_path):
    impostor = tmp_path / "extra" / "fastmcp"
    impostor.mkdir(parents=True)
    (impostor / "__init__.py").write_text("raise ImportError('impostor fastmcp from PYTHONPATH')\n")
    env = child_env(token, PYTHONPATH=str(tmp_path / "extra"), SHIV_ROOT=str(tmp_path / "cache"))
    assert_served(stdio_exchange([sys.executable, str(PYZ), "fastmcp_server.py"], EXCHANGE, token,
                                 cwd=SERVERS, env=env))


# -- the binary ---------------------------------------------------------------


def binary_cache_env(token: str, **extra: str) -> dict:
    """child_env without the variables that choose where the binary unpacks, plus extra."""
    env = child_env(token, **extra)
    for name in ("MCPRUN_CACHE", "XDG_CACHE_HOME", "HOME", "TMPDIR"):
        if name not in extra:
            env.pop(name, None)
    return env


def unpacked_builds(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("mcprun-*") if (p / ".complete").exists())


def with_mounts(mounts: dict, command: list[str]) -> list[str]:
    """Run command in a private mount namespace with tmpfs folders mounted with the given options."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to mount a noexec file system")
    script = "".join(f"mount -t tmpfs -o {options} tmpfs {folder} && " for folder, options in mounts.items())
    return ["unshare", "--mount", "sh", "-c", script + 'exec "$@"', "sh", *command]


@needs_binary
def test_binary_serves_in_an_empty_chroot(token, tmp_path):
    """Nothing but the binary, the server file and /proc: no libc, no Python, no /tmp, no HOME.

    TMPDIR names the jail's root, the one folder there, for the binary to unpack into once.
    """
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    jail = tmp_path / "jail"
    (jail / "proc").mkdir(parents=True)
    shutil.copy2(BINARY, jail / "mcprun")
    (jail / "server.py").write_text("from fastmcp import FastMCP\n\nmcp = FastMCP('Jailed')\n\n\n"
                                    "@mcp.tool\ndef echo(text: str) -> str:\n    return text\n")
    subprocess.run(["mount", "-t", "proc", "proc", str(jail / "proc")], check=True)
    try:
        for _ in range(2):  # the first run unpacks, the second runs what the first unpacked
            result = stdio_exchange([shutil.which("chroot"), str(jail), "/mcprun", "/server.py"], EXCHANGE, token,
                                    env={"PATH": "/", "TMPDIR": "/", "MCPRUN_TEST_TOKEN": token})
            assert_served(result)
    finally:
        subprocess.run(["umount", "-l", str(jail / "proc")], check=False)
    assert sorted(p.name for p in jail.iterdir()) == ["mcprun", "mcprun-0", "proc", "server.py"]
    assert len(unpacked_builds(jail / "mcprun-0")) == 1


@needs_binary
def test_binary_carries_the_stdlib_and_httpx(token, tmp_path):
    server = tmp_path / "uses_stdlib.py"
    server.write_text(
        "import sqlite3, email.mime.text, xml.etree.ElementTree, csv, decimal, zoneinfo, httpx\n"
        "from fastmcp import FastMCP\n\nmcp = FastMCP('Stdlib')\n\n\n"
        "@mcp.tool\ndef echo(text: str) -> str:\n"
        "    return sqlite3.connect(':memory:').execute('select ?', (text,)).fetchone()[0]\n")
    assert_served(stdio_exchange([str(BINARY), str(server)], EXCHANGE, token, cwd=tmp_path))


@needs_binary
def test_binary_unpacks_once_and_a_kill_leaves_no_process(token, tmp_path):
    """The first start unpacks into the cache; later ones reuse it; SIGKILL leaves nothing running."""
    import signal
    import time

    from helpers import RunningServer, pids_with_token

    cache = tmp_path / "cache"
    env = binary_cache_env(token, MCPRUN_CACHE=str(cache))
    first = subprocess.run([str(BINARY), "--version"], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    [build] = unpacked_builds(cache)
    marker = (cache / build / ".complete").stat()
    process = subprocess.Popen([str(BINARY), "fastmcp_server.py", "-t", "http", "-p", "0"], cwd=SERVERS, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    server = RunningServer(process)
    server.wait_ready()
    assert (cache / build / ".complete").stat().st_ino == marker.st_ino  # not unpacked again
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    deadline = time.monotonic() + 10
    while pids_with_token(token) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pids_with_token(token) == [], "a process outlived the killed binary"
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [build]


@needs_binary
def test_binary_cleans_other_builds_and_broken_unpacks_unless_in_use_or_started_lately(token, tmp_path):
    import fcntl

    cache = tmp_path / "cache"
    old, held, foreign = cache / "mcprun-0123456789abcdef", cache / "mcprun-fedcba9876543210", cache / "other"
    recent, unused = cache / "mcprun-1111111111111111", cache / "mcprun-2222222222222222"
    for folder in (old, held, foreign, recent, unused):
        folder.mkdir(parents=True)
        (folder / ".complete").touch()
    (cache / f".{recent.name}.lock").touch()  # started lately: another version used by turns
    (cache / f".{unused.name}.lock").touch()
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(cache / f".{unused.name}.lock", (two_days_ago, two_days_ago))
    learn = subprocess.run([str(BINARY), "--version"], env=binary_cache_env(token, MCPRUN_CACHE=str(tmp_path / "id")),
                           capture_output=True, text=True, timeout=120)
    assert learn.returncode == 0, learn.stderr
    [ours] = unpacked_builds(tmp_path / "id")
    finished = subprocess.Popen(["true"])
    finished.wait()  # runs killed while unpacking (this build and another) left half-made folders
    broken = [cache / f".{ours}.tmp.{finished.pid}", cache / f".mcprun-aaaaaaaaaaaaaaaa.tmp.{finished.pid}"]
    for folder in broken:
        folder.mkdir()
    holder = os.open(cache / ".mcprun-fedcba9876543210.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_SH)  # a running mcprun of that build
    try:
        result = subprocess.run([str(BINARY), "--version"], env=binary_cache_env(token, MCPRUN_CACHE=str(cache)),
                                capture_output=True, text=True, timeout=120)
    finally:
        os.close(holder)
    assert result.returncode == 0, result.stderr
    assert not old.exists() and not unused.exists() and not any(folder.exists() for folder in broken)
    assert held.exists() and foreign.exists() and recent.exists()
    assert len(unpacked_builds(cache)) == 3  # ours, the held one and the recent one
    assert time.time() - (cache / f".{ours}.lock").stat().st_mtime < 600  # this start marked its own
    os.utime(cache / f".{recent.name}.lock", (two_days_ago, two_days_ago))
    again = subprocess.run([str(BINARY), "--version"], env=binary_cache_env(token, MCPRUN_CACHE=str(cache)),
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert not recent.exists() and held.exists()  # a start that unpacks nothing cleans too


@needs_binary
def test_binary_with_a_noexec_read_only_tmpdir_unpacks_under_home(token, tmp_path):
    home, temp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    temp.mkdir()
    command = with_mounts({temp: "noexec,ro"}, [str(BINARY), "fastmcp_server.py"])
    result = stdio_exchange(command, EXCHANGE, token, cwd=SERVERS,
                            env=binary_cache_env(token, HOME=str(home), TMPDIR=str(temp)))
    assert_served(result)
    assert len(unpacked_builds(home / ".cache" / "mcprun")) == 1


@needs_binary
@pytest.mark.parametrize("where", ["MCPRUN_CACHE", "TMPDIR"])
def test_binary_with_only_noexec_folders_says_what_to_set(token, tmp_path, where):
    temp = tmp_path / "noexec"
    temp.mkdir()
    command = with_mounts({temp: "noexec"}, [str(BINARY), "--version"])
    result = subprocess.run(command, env=binary_cache_env(token, **{where: str(temp)}), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("mcprun: error: ")
    assert "set MCPRUN_CACHE to a writable folder" in result.stderr or "point MCPRUN_CACHE at" in result.stderr


@needs_binary
def test_binary_shared_read_only_cache_serves_another_user_from_another_cwd(token, public_tmp):
    cache = public_tmp / "cache"
    warmed = subprocess.run([str(BINARY), "--version"], capture_output=True, text=True, timeout=120,
                            env=binary_cache_env(token, MCPRUN_CACHE=str(cache)))
    assert warmed.returncode == 0, warmed.stderr
    subprocess.run(["chmod", "-R", "a-w", str(cache)], check=True)
    shutil.copy2(BINARY, public_tmp / "mcprun")
    workdir = public_tmp / "readonly-cwd"
    workdir.mkdir()
    shutil.copy(SERVERS / "demo.py", workdir)
    shutil.copy(SERVERS / "fastmcp_server.py", workdir)
    subprocess.run(["chmod", "-R", "a-w", str(workdir), str(public_tmp / "mcprun")], check=True)
    command = as_nobody(str(public_tmp / "mcprun"), str(workdir / "fastmcp_server.py"))
    assert_served(stdio_exchange(command, EXCHANGE, token, cwd="/",
                                 env=binary_cache_env(token, MCPRUN_CACHE=str(cache))))


@needs_binary
def test_binary_gives_subprocesses_the_original_environment(token, tmp_path):
    server = tmp_path / "env_probe.py"
    server.write_text(
        "import os\nfrom fastmcp import FastMCP\n\nmcp = FastMCP('Probe')\n\n\n@mcp.tool\ndef echo(text: str) -> str:\n"
        "    leaked = sorted(k for k in os.environ if k.startswith(('_PYI_', 'MCPRUN_BINARY', 'LD_LIBRARY_PATH')))\n"
        "    return text if not leaked else ' '.join(leaked)\n")
    assert_served(stdio_exchange([str(BINARY), str(server)], EXCHANGE, token, cwd=tmp_path,
                                 env=child_env(token)))


def holds_open(pid: int, path: Path) -> bool:
    """Tell whether process pid has path open (or the file that was there, since unlinked)."""
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") in (str(path), f"{path} (deleted)")
                   for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def reply_line(process: subprocess.Popen, timeout: float = 120) -> dict:
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        assert selector.select(timeout), f"no reply within {timeout} s"
        return json.loads(process.stdout.readline())


def start_waits_on_a_cleaner(command: list[str], env: dict, folder: Path, marker: Path) -> None:
    """Start command while a cleaner of another build holds marker, the lock on folder; the cleaner removes
    folder and marker and lets go, as it does. The start must unpack again and hold the marker that is there
    now, so that the next cleaner finds it in use instead of removing the folder under a running server."""
    import fcntl

    cleaner = os.open(marker, os.O_RDWR | os.O_CREAT)
    fcntl.flock(cleaner, fcntl.LOCK_EX)
    server = subprocess.Popen([*command, "fastmcp_server.py"], cwd=SERVERS, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: holds_open(server.pid, marker), timeout=60, what="the start opening the lock")
        shutil.rmtree(folder)
        marker.unlink()
        os.close(cleaner)
        server.stdin.write((json.dumps(INITIALIZE) + "\n").encode())
        server.stdin.flush()
        assert reply_line(server)["id"] == 1
        next_cleaner = os.open(marker, os.O_RDWR | os.O_CREAT)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(next_cleaner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(next_cleaner)
        server.stdin.close()
        assert server.wait(60) == 0
    finally:
        try:
            os.killpg(server.pid, 9)
        except ProcessLookupError:
            pass
        server.wait(10)


@needs_pyz
def test_pyz_start_that_waited_on_a_cleaner_holds_its_folder(token, tmp_path):
    root = tmp_path / "cache"
    env = child_env(token, SHIV_ROOT=str(root))
    learn = subprocess.run([sys.executable, str(PYZ), "--version"], capture_output=True, text=True, timeout=300,
                           env=env)
    assert learn.returncode == 0, learn.stderr
    [folder] = [p for p in root.glob("mcprun_*") if p.is_dir()]
    start_waits_on_a_cleaner([sys.executable, str(PYZ)], env, folder, root / f".{folder.name}.in-use")


@needs_binary
def test_binary_start_that_waited_on_a_cleaner_holds_its_folder(token, tmp_path):
    cache = tmp_path / "cache"
    env = binary_cache_env(token, MCPRUN_CACHE=str(cache))
    learn = subprocess.run([str(BINARY), "--version"], capture_output=True, text=True, timeout=120, env=env)
    assert learn.returncode == 0, learn.stderr
    [build] = unpacked_builds(cache)
    start_waits_on_a_cleaner([str(BINARY)], env, cache / build, cache / f".{build}.lock")
