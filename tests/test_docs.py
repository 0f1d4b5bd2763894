"""The README and --help stay in step with the parser."""

import os
import re
import subprocess

from conftest import ROOT, mcprun_command

README = (ROOT / "README.md").read_text()


def long_options() -> set[str]:
    import sys

    sys.path.insert(0, str(ROOT))
    import mcprun

    return {option for action in mcprun.build_parser()._actions for option in action.option_strings
            if option.startswith("--")}


def test_every_long_option_is_in_the_readme_table():
    table = README.split("## Options", 1)[1].split("`mcprun --help`", 1)[0]
    missing = sorted(option for option in long_options() - {"--help"} if f"`{option}`" not in table)
    assert missing == []


def test_readme_help_is_verbatim():
    """Regenerate with: COLUMNS=100 mcprun --help, pasted under `mcprun --help`: in the README."""
    shown = re.search(r"`mcprun --help`:\n\n```text\n(.*?)```", README, re.S)[1]
    actual = subprocess.run([*mcprun_command(), "--help"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "100"}).stdout
    assert shown == actual


def test_exit_codes_documented_in_help_and_readme():
    import mcprun

    for code in (mcprun.EXIT_OK, mcprun.EXIT_FAILURE, mcprun.EXIT_USAGE):
        assert f"| {code} |" in README
        assert f"\n  {code}  " in mcprun.EPILOG
