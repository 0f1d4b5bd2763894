"""Replace the __main__.py of a shiv zipapp, keeping its shebang and byte-for-byte reproducibility.

    python packaging/set_pyz_main.py dist/mcprun.pyz packaging/pyz_main.py
"""

import os
import sys
import zipfile


def set_main(archive_path: str, main_path: str) -> None:
    with open(archive_path, "rb") as f:
        shebang = f.readline()
    with zipfile.ZipFile(archive_path) as source:
        entries = [(info, source.read(info)) for info in source.infolist()]
    with open(main_path, "rb") as f:
        main = f.read()
    temporary = archive_path + ".tmp"
    with open(temporary, "wb") as f:
        f.write(shebang)
        with zipfile.ZipFile(f, "w") as target:
            for info, data in entries:
                target.writestr(info, main if info.filename == "__main__.py" else data)
    os.chmod(temporary, 0o755)
    os.replace(temporary, archive_path)


if __name__ == "__main__":
    set_main(*sys.argv[1:])
