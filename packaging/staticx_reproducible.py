"""Run staticx so that the same input gives the same output.

staticx tars the program and its libraries from fresh temporary copies, so each entry
carries the build's clock and owner. This gives every entry SOURCE_DATE_EPOCH as its time
and root as its owner, then runs staticx unchanged:

    python packaging/staticx_reproducible.py PROGRAM OUTPUT
"""

import os
import sys
import tarfile

from staticx.__main__ import main

EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
_addfile = tarfile.TarFile.addfile


def addfile(self, tarinfo, fileobj=None):
    tarinfo.mtime = EPOCH
    tarinfo.uid = tarinfo.gid = 0
    tarinfo.uname = tarinfo.gname = "root"
    return _addfile(self, tarinfo, fileobj)


tarfile.TarFile.addfile = addfile
sys.argv[0] = "staticx"
sys.exit(main())
