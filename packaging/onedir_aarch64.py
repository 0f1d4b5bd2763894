"""Make the aarch64 one-folder build from the x86_64 one, with no PyInstaller run on aarch64.

    python packaging/onedir_aarch64.py ONEDIR BOOTLOADER ROOT SITE OUTPUT

Both machines' Debian bookworm python3 is CPython 3.11.2, so everything PyInstaller made from
Python files (the archive in the executable, base_library.zip, the data files) is the same for
both, and only machine code differs. OUTPUT is ONEDIR with:

- mcprun: BOOTLOADER (an aarch64 PyInstaller bootloader) with the x86_64 executable's archive,
  the ELF section `pydata` where PyInstaller puts it on Linux and its bootloader looks for it;
- every x86-64 ELF file of _internal/ replaced by its aarch64 counterpart: extension modules
  (and the `*.libs` folders they load) from SITE, the aarch64 wheels unpacked; the stdlib's from
  ROOT's lib-dynload; the shared libraries (libpython, libssl, ...) by name from ROOT's library
  folders. ROOT is the arm64 Debian packages unpacked. An extension module whose distribution's
  aarch64 wheel is pure (caio's: its modules fall back to Python code) is left out, as the aarch64
  zipapp has none; any other x86-64 file with no counterpart stops the build, and none may remain;
- the wheels' metadata (WHEEL, RECORD) from SITE, so it names the aarch64 wheels;
- _sysconfigdata__aarch64-linux-gnu.pyc: the pure module that sysconfig imports on aarch64 (named
  by the machine, so the x86_64 build has only its own), compiled beside the extension modules,
  where the bootloader's importer falls back to Python's own finder.
"""

import os
import py_compile
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

X86_64, AARCH64 = 62, 183  # ELF e_machine
HOST, TARGET = "x86_64-linux-gnu", "aarch64-linux-gnu"
OBJCOPY = os.environ.get("OBJCOPY_AARCH64", "aarch64-linux-gnu-objcopy")


def fail(message: str):
    sys.exit(f"build: error: {message}")


def machine(path: Path):
    """Return an ELF file's e_machine, or None for any other file."""
    with open(path, "rb") as f:
        head = f.read(20)
    return int.from_bytes(head[18:20], "little") if head[:4] == b"\x7fELF" else None


def needed(path: Path) -> set:
    dynamic = subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout
    return {line.rsplit("[", 1)[1].rstrip("]") for line in dynamic.splitlines() if "(NEEDED)" in line}


def in_root(root: Path, path: Path) -> Path:
    """Return PATH with its symbolic links followed as if ROOT were /."""
    while path.is_symlink():
        target = os.readlink(path)
        path = Path(os.path.normpath(root / target.lstrip("/") if target.startswith("/") else path.parent / target))
    return path


def pure_on_aarch64(internal: Path, site: Path) -> dict:
    """Return {file under _internal: distribution} for the x86_64 wheels' files whose aarch64 wheel is pure."""
    files = {}
    for record in sorted(internal.glob("*.dist-info/RECORD")):
        wheel = site / record.parent.name / "WHEEL"
        if wheel.is_file() and "Root-Is-Purelib: true" in wheel.read_text():
            for line in record.read_text().splitlines():
                files[line.split(",")[0]] = record.parent.name.split("-")[0]
    return files


def main() -> None:
    onedir, bootloader, root, site, output = map(Path, sys.argv[1:6])
    python = f"python{sys.version_info[0]}.{sys.version_info[1]}"  # this Python froze ONEDIR
    dynload = root / "usr" / "lib" / python / "lib-dynload"
    libraries = [root / "lib" / TARGET, root / "usr" / "lib" / TARGET]
    if not dynload.is_dir():
        fail(f"{root} has no {python} (its lib-dynload is missing)")
    if output.exists():
        shutil.rmtree(output)
    shutil.copytree(onedir, output, symlinks=True)
    internal = output / "_internal"

    with tempfile.TemporaryDirectory() as temporary:
        archive = Path(temporary) / "pydata"
        subprocess.run(["objcopy", "--dump-section", f"pydata={archive}", str(onedir / "mcprun")], check=True)
        shutil.copyfile(bootloader, output / "mcprun")
        subprocess.run([OBJCOPY, "--add-section", f"pydata={archive}", str(output / "mcprun")], check=True)
        os.chmod(output / "mcprun", 0o755)

    pure = pure_on_aarch64(internal, site)
    replaced = []
    for path in sorted(internal.rglob("*")):
        if path.is_symlink() or not path.is_file() or machine(path) != X86_64:
            continue
        relative = path.relative_to(internal)
        name = path.name.replace(f"-{HOST}.", f"-{TARGET}.")  # extension modules' tag: .cpython-311-x86_64-linux-gnu.so
        if relative.parent.name == "lib-dynload":  # the stdlib's: python3.11/lib-dynload
            candidates = [dynload / name]
        elif relative.parent.name.endswith(".libs"):
            continue  # a wheel's own libraries, hash-named: the aarch64 folder replaces the whole folder, below
        else:
            candidates = [site / relative.parent / name] + ([folder / name for folder in libraries]
                                                            if len(relative.parts) == 1 else [])
        source = next((in_root(root, c) for c in candidates if c.exists()), None)
        if source is None and relative.as_posix() in pure:
            print(f"build: the aarch64 binary leaves out _internal/{relative}: {pure[relative.as_posix()]}'s"
                  " aarch64 wheel is pure Python", file=sys.stderr)
            path.unlink()
            continue
        if source is None:
            fail(f"the aarch64 binary has no counterpart for _internal/{relative} (x86-64 ELF);"
                 f" looked in {', '.join(str(c.parent) for c in candidates)}")
        mode = path.stat().st_mode & 0o777
        path.unlink()
        shutil.copyfile(source, path.with_name(name))
        os.chmod(path.with_name(name), mode)
        replaced.append(path.with_name(name))

    # The aarch64 wheels' library folders that their extension modules load (through $ORIGIN/...).
    wanted = set().union(*(needed(path) for path in replaced))
    for folder in sorted(internal.rglob("*.libs")):
        shutil.rmtree(folder)
    for folder in sorted(site.rglob("*.libs")):
        if folder.is_dir() and any(file.name in wanted for file in folder.iterdir()):
            shutil.copytree(folder, internal / folder.relative_to(site), symlinks=True)

    for metadata in sorted(internal.glob("*.dist-info")):
        for file in sorted(metadata.iterdir()):
            if (site / metadata.name / file.name).is_file():
                shutil.copyfile(site / metadata.name / file.name, file)

    module = f"_sysconfigdata__{TARGET}"
    py_compile.compile(str(root / "usr" / "lib" / python / f"{module}.py"), cfile=str(internal / f"{module}.pyc"),
                       dfile=f"{module}.py", doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)

    left = [path for path in sorted(output.rglob("*")) if path.is_file() and not path.is_symlink()
            and machine(path) not in (None, AARCH64)]
    if left:
        fail(f"the aarch64 one-folder build still holds {len(left)} ELF files of another machine, first"
             f" {left[0].relative_to(output)}")


if __name__ == "__main__":
    main()
