"""The parser argparse-manpage renders into mcprun.1.

The epilog is left out: mcprun.1.include gives its examples, environment and exit
codes proper man sections (tests/test_docs.py keeps the two in step).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mcprun  # noqa: E402


def build_parser():
    parser = mcprun.build_parser()
    parser.epilog = None
    return parser
