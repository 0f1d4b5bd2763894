"""Make the mcprun binary: the launcher (packaging/launcher.c) with the one-folder build appended.

    python packaging/bundle_binary.py [--sysroot ROOT] LAUNCHER ONEDIR OUTPUT

The archive holds app/ (PyInstaller's one-folder build, plus every shared library its
programs and extension modules load from the build host that the build itself lacks: the
C library, mostly; with --sysroot, from ROOT instead, another machine's unpacked Debian
packages, whose programs ldd cannot run) and `ld-mcprun.so.2`, the dynamic loader under a name that
says whose it is (PyInstaller knows a loader by its `ld-*.so.N` name and then finds itself
from argv instead of /proc/self/exe). Entries go in sorted order with fixed modes and no times, so
the same inputs give the same bytes; the build id is a hash of the archive. Format: see
the comment at the top of packaging/launcher.c.
"""

import hashlib
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

ELF_MAGIC = b"\x7fELF"
PT_INTERP = 3


def is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == ELF_MAGIC


def loader_of(program: Path) -> str:
    """Return the dynamic loader a 64-bit little-endian ELF program names (its PT_INTERP): /lib64/ld-linux-x86-64.so.2
    on x86_64, /lib/ld-linux-aarch64.so.1 on aarch64, so the bundle takes the build machine's own."""
    data = program.read_bytes()
    if data[:4] != ELF_MAGIC or data[4] != 2 or data[5] != 1:
        sys.exit(f"bundle_binary: {program} is not a 64-bit little-endian ELF program")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for index in range(phnum):
        kind, _, offset, _, _, size = struct.unpack_from("<IIQQQQ", data, phoff + index * phentsize)
        if kind == PT_INTERP:
            return data[offset:offset + size].rstrip(b"\0").decode()
    sys.exit(f"bundle_binary: {program} names no dynamic loader")


def host_libraries(onedir: Path) -> dict:
    """Return {soname: path} of the libraries ldd finds outside the one-folder build."""
    bundled = {path.name for path in onedir.rglob("*") if path.is_file()}
    found = {}
    for path in sorted(onedir.rglob("*")):
        if not path.is_file() or path.is_symlink() or not is_elf(path):
            continue
        result = subprocess.run(["ldd", str(path)], capture_output=True, text=True)
        for line in result.stdout.splitlines():
            match = re.match(r"\s*(\S+) => (/\S+)", line)
            if match and match.group(1) not in bundled:
                found[match.group(1)] = os.path.realpath(match.group(2))
            elif "=> not found" in line:
                name = line.split()[0]
                if name not in bundled:
                    sys.exit(f"bundle_binary: {path} needs {name}, which neither the build nor the host has")
    return found


def in_root(root: Path, path: Path) -> Path:
    """Return PATH with its symbolic links followed as if ROOT were /."""
    for _ in range(40):
        if not path.is_symlink():
            return path
        target = os.readlink(path)
        path = Path(os.path.normpath(root / target.lstrip("/") if target.startswith("/") else path.parent / target))
    sys.exit(f"bundle_binary: {path}: too many levels of symbolic links")


def root_libraries(onedir: Path, root: Path, loader: str) -> dict:
    """Return {soname: path} of the libraries in ROOT that the build's ELF files need, transitively.

    Like host_libraries, for another machine: the names come from readelf, which reads any machine's
    ELF files, and are looked up in ROOT's library folders; the loader is left to its own entry, as ldd does.
    """
    bundled = {path.name for path in onedir.rglob("*") if path.is_file()}
    folders = sorted(root.glob("lib/*-linux-gnu")) + sorted(root.glob("usr/lib/*-linux-gnu"))
    todo = [path for path in sorted(onedir.rglob("*")) if path.is_file() and not path.is_symlink() and is_elf(path)]
    found = {}
    while todo:
        path = todo.pop(0)
        dynamic = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
        for name in re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", dynamic):
            if name in bundled or name in found or name == os.path.basename(loader):
                continue
            library = next((folder / name for folder in folders if (folder / name).exists()), None)
            if library is None:
                sys.exit(f"bundle_binary: {path} needs {name}, which neither the build nor {root} has")
            found[name] = in_root(root, library)
            todo.append(found[name])
    return found


def entries(onedir: Path, root: Path | None):
    """Yield (archive path, source path or None for a folder, mode or None for a link) in a fixed order.

    The host's libraries go into app/_internal beside PyInstaller's own: the launcher gives
    the loader that folder, and the bootloader, when it restarts itself, LD_LIBRARY_PATH.
    """
    files = {"app/" + path.relative_to(onedir).as_posix(): path for path in onedir.rglob("*")}
    loader = loader_of(onedir / "mcprun")
    libraries = host_libraries(onedir) if root is None else root_libraries(onedir, root, loader)
    for soname, path in libraries.items():
        files[f"app/_internal/{soname}"] = Path(path)
    files["app"] = onedir
    loader = Path(os.path.realpath(loader)) if root is None else in_root(root, root / loader.lstrip("/"))
    yield "ld-mcprun.so.2", loader, 0o755
    for name, path in sorted(files.items()):
        if path.is_symlink():
            yield name, path, None
        elif path.is_dir():
            yield name, None, 0o755
        else:
            yield name, path, 0o755 if os.access(path, os.X_OK) else 0o644


def archive(onedir: Path, root: Path | None) -> bytes:
    parts = []
    for name, source, mode in entries(onedir, root):
        encoded = name.encode()
        if source is None:
            kind, data, size = b"d", b"", 0
        elif mode is None:
            kind, data = b"l", os.readlink(source).encode()
            size, mode = len(data), 0o777
        else:
            raw = source.read_bytes()
            kind, data, size = b"f", zlib.compress(raw, 9), len(raw)
        parts.append(kind + struct.pack("<IH", mode, len(encoded)) + encoded
                     + struct.pack("<QQ", len(data), size) + data)
    return b"".join(parts)


def main() -> None:
    arguments = sys.argv[1:]
    root = None
    if arguments[:1] == ["--sysroot"]:
        root, arguments = Path(arguments[1]), arguments[2:]
    launcher, onedir, output = arguments
    body = archive(Path(onedir), root)
    head = Path(launcher).read_bytes()
    build_id = hashlib.sha256(head + body).hexdigest()[:16].encode()
    with open(output, "wb") as f:
        f.write(head + body + build_id + struct.pack("<Q", len(head)) + b"MCPRUNB1")
    os.chmod(output, 0o755)


if __name__ == "__main__":
    main()
