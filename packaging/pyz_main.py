# -*- coding: utf-8 -*-
"""mcprun.pyz's __main__: check the Python, choose where to unpack, then hand over to shiv.

This runs before anything is unpacked, under whatever python3 the user has, so it
keeps to plain Python 3.6 syntax and the stdlib. What it adds to shiv's bootstrap:

- a one-line error on a Python (or machine) whose wheels the archive does not carry;
- an unpack folder that works without a usable HOME: $SHIV_ROOT, then ~/.shiv, then
  $XDG_CACHE_HOME/mcprun, then $TMPDIR/mcprun-UID; a read-only folder is fine when
  this build is already unpacked there (a shared, pre-extracted cache);
- one folder per build (mcprun_<build id>), whatever the archive is called, and the
  folders of other builds removed once no running mcprun uses them and none has started them
  for a day (two versions used in turn keep their folders: neither unpacks again);
- PYTHONPATH entries moved after the bundle, so they add packages but never shadow it;
- at unpacking, bytecode compiled only for the ~1,100 modules a server start imports (listed by
  packaging/serving_modules.py at build time), not all ~3,000: the rest compile on first import;
- the archive read once (its index of ~3,700 names costs ~50 ms a read): shiv's bootstrap and
  mcprun's packed-server check get the open archive, and the archive leaves sys.path once
  unpacked, so importlib.metadata's version lookups no longer scan it.
"""

import fcntl
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import zipfile

EXIT_FAILURE = 1
PREFIX = "mcprun_"
KEPT_UNUSED = 24 * 3600  # seconds another build's folder stays after its last start


def fail(message):
    sys.stderr.write("mcprun: error: %s\n" % message)
    sys.exit(EXIT_FAILURE)


def carried_builds(names):
    """Return the CPython versions ('3.11', ...) and the machines ('x86_64', ...) whose compiled wheels
    the archive holds, from pydantic_core's extension module names (cpython-311-x86_64-linux-gnu)."""
    versions, machines = set(), set()
    for name in names:
        if name.startswith("site-packages/pydantic_core/_pydantic_core.cpython-"):
            tag, machine = name.split(".cpython-", 1)[1].split("-")[:2]
            versions.add((int(tag[0]), int(tag[1:])))
            machines.add(machine)
    return ["%d.%d" % v for v in sorted(versions)], sorted(machines)


def artifact(machine):
    """Return the name of the artifacts built for machine: mcprun (x86_64), mcprun-aarch64, ...
    (mcprun.artifact_name, which this bootstrap cannot import, says the same)."""
    return "mcprun" if machine == "x86_64" else "mcprun-" + machine


def check_python(names):
    carried, machines = carried_builds(names)
    running, machine = "%d.%d" % sys.version_info[:2], platform.machine()
    name = artifact(machines[0]) + ".pyz"
    if machine not in machines:
        fail("%s runs on Linux %s, not %s: use %s.pyz, or the %s binary, which needs no Python"
             % (name, ", ".join(machines), machine, artifact(machine), artifact(machine)))
    if platform.python_implementation() != "CPython" or running not in carried:
        fail("%s runs on CPython %s for Linux %s, not %s %s; run it with one of those "
             "(e.g. python%s %s), or use the %s binary, which needs no Python"
             % (name, ", ".join(carried), machine, platform.python_implementation(),
                platform.python_version(), carried[-1], name, artifact(machine)))


def writable(folder):
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


def choose_root(build_id):
    """Return the folder to unpack into, setting SHIV_ROOT so shiv (and reloaded children) agree."""
    unpacked = PREFIX + build_id
    if os.environ.get("SHIV_ROOT"):
        root = os.path.expanduser(os.environ["SHIV_ROOT"])
        if not os.path.isdir(os.path.join(root, unpacked, "site-packages")) and not writable(root):
            fail("SHIV_ROOT=%s is not writable and holds no unpacked copy of this build; "
                 "point SHIV_ROOT at a writable folder" % root)
        return root
    candidates = []
    home = os.path.expanduser("~")
    if home != "~" and home != "/":
        candidates.append(os.path.join(home, ".shiv"))
    if os.environ.get("XDG_CACHE_HOME"):
        candidates.append(os.path.join(os.environ["XDG_CACHE_HOME"], "mcprun"))
    candidates.append(os.path.join(tempfile.gettempdir(), "mcprun-%d" % os.getuid()))
    for root in candidates:
        if os.path.isdir(os.path.join(root, unpacked, "site-packages")) or writable(root):
            os.environ["SHIV_ROOT"] = root
            return root
    fail("no writable folder to unpack mcprun.pyz into (tried %s); set SHIV_ROOT to one"
         % ", ".join(candidates))


def lock_marker(path):
    """Hold a shared lock on the marker at path, and return its descriptor.

    A cleaner removes a build's folder holding the exclusive lock, then unlinks the marker. A lock taken
    on a marker unlinked meanwhile protects nothing (the next cleaner makes a new file and locks that),
    so lock again until the file locked is the one at path: then no cleaner can remove the folder.
    """
    for _ in range(100):  # each retry follows a cleaner's removal; more than a few means something odd
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except OSError:
            pass
        os.close(fd)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return fd


def hold_and_clean(root, build_id):
    """Mark this build's folder in use and started now (its marker's time), and remove the folders of other
    builds that nobody uses and nobody has started for KEPT_UNUSED seconds."""
    try:
        in_use = lock_marker(os.path.join(root, ".%s%s.in-use" % (PREFIX, build_id)))
    except OSError:
        return None  # a read-only shared cache: nothing to mark, nothing to clean
    try:
        os.utime(in_use)
    except OSError:
        pass
    now = time.time()
    for name in os.listdir(root):
        if not name.startswith(PREFIX) or name.startswith(PREFIX + build_id):
            continue
        other = name[len(PREFIX):].split(".", 1)[0]
        marker = os.path.join(root, ".%s%s.in-use" % (PREFIX, other))
        try:
            if now - os.stat(marker).st_mtime < KEPT_UNUSED:
                continue  # started lately: another version in use by turns, or just replaced
        except OSError:
            pass
        try:
            fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # another mcprun runs that build: leave it
            continue
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        for leftover in (marker, os.path.join(root, ".%s%s_lock" % (PREFIX, other))):
            try:
                os.unlink(leftover)
            except OSError:
                pass
        os.close(fd)
    return in_use


class ListedModulesOnly:
    """Stands in for compileall in shiv's unpacking: compile the modules listed in mcprun_compile.txt."""

    @staticmethod
    def compile_dir(folder, quiet=0, workers=0):
        import compileall
        import concurrent.futures
        import functools

        site = os.path.join(str(folder), "site-packages")
        try:
            with open(os.path.join(site, "mcprun_compile.txt")) as listing:
                files = [os.path.join(site, name) for name in listing.read().split()]
        except OSError:
            return compileall.compile_dir(folder, quiet=quiet, workers=workers)
        compile_file = functools.partial(compileall.compile_file, quiet=quiet)
        if workers == 1 or len(os.sched_getaffinity(0)) < 2:
            return all([compile_file(path) for path in files])
        with concurrent.futures.ProcessPoolExecutor(max_workers=workers or None) as pool:
            return all(pool.map(compile_file, files, chunksize=32))


def main():
    archive_path = sys.argv[0]
    archive = zipfile.ZipFile(archive_path)
    names = archive.namelist()
    build_id = json.loads(archive.read("environment.json").decode())["build_id"]
    check_python(names)
    root = choose_root(build_id)
    in_use = hold_and_clean(root, build_id)  # noqa: F841 - the lock lives as long as this process

    import contextlib
    import pathlib

    import _bootstrap

    def cache_path(archive, root_dir, build_id):
        return pathlib.Path(root_dir or root).expanduser() / (PREFIX + build_id)

    user_paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    user_paths += [os.path.abspath(p) for p in user_paths]
    start = _bootstrap.run

    def run(entry_point):
        moved = [p for p in sys.path if p in user_paths]
        itself = [p for p in sys.path if p and os.path.abspath(p) == os.path.abspath(archive_path)]
        sys.path[:] = [p for p in sys.path if p not in moved and p not in itself] + moved
        start(entry_point)

    _bootstrap.cache_path = cache_path
    _bootstrap.current_zipfile = lambda: contextlib.nullcontext(archive)
    _bootstrap.compileall = ListedModulesOnly
    _bootstrap.mcprun_archive = archive  # for mcprun's packed-server check
    _bootstrap.run = run
    _bootstrap.bootstrap()


main()
