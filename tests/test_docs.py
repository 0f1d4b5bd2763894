"""README.md and docs/*.md stay true: their transcripts run against the real mcprun.

The convention, for every fenced block in README.md and docs/*.md:

- ```console is a transcript, and is run. A line starting with "$ " is a command (a line ending
  in a backslash continues on the next one); the lines after it, up to the next command, are
  what it prints, stdout and stderr together. The commands of one block run one after another
  in one bash, in a fresh folder holding a copy of examples/ and the page's files (below), with
  `mcprun` on PATH running the program under test (helpers.mcprun_command()). A command that
  exits non-zero must show its status (`; echo "exit $?"`). In the expected output, a line
  `...` matches any number of lines and `[..]` any text within a line; trailing spaces and
  trailing blank lines are ignored.
- ```console serve is a serving transcript: exactly one "$ " command, which starts a server that
  keeps running, and the lines it prints as it starts. It runs as a transcript does (same folder,
  PATH and environment), with stdin an open pipe so that a stdio server keeps serving, and passes
  once what it has printed matches the expected lines; it fails as soon as a line cannot fit
  them, if it exits first, or after COMMAND_TIMEOUT. Then every process it started is killed.
  If mcprun printed a `ready: ... at URL` line, GET /healthz on that address must answer 200.
  Put `[..]` where times and process ids go; a fixed port that is taken fails with a message.
- ```LANG file=PATH (e.g. ```python file=server.py) is a file of its page: it is written to
  PATH in the folder of each of that page's transcripts.
- Any other block (```sh, ```text, ```ini, ```json) is not run: it needs the network, root,
  systemd, a package from PyPI or files that are not in examples/ or its page. Its mcprun
  commands must still parse with mcprun's own parser: "$ " lines, ini `ExecStart=` lines, and
  the `args` of a JSON `mcpServers` entry whose `command` is mcprun.

Each transcript is one test, named by its page and line (docs/options.md:42).
"""

from __future__ import annotations

import contextlib
import difflib
import io
import json
import os
import queue
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import EXAMPLES, READY, ROOT, TOKEN_VARIABLE, kill_token, mcprun_command

README = (ROOT / "README.md").read_text()
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND_TIMEOUT = 60  # seconds per command of a transcript
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    file: str | None
    body: str
    files: dict[str, str] = field(default_factory=dict)  # the page's file blocks
    serve: bool = False  # ```console serve

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks_of(page: Path) -> list[Block]:
    text = page.read_text()
    blocks = []
    for match in FENCE.finditer(text):
        words = match["info"].split()
        file = next((word[5:] for word in words if word.startswith("file=")), None)
        blocks.append(Block(page, text.count("\n", 0, match.start()) + 1, words[0] if words else "", file,
                            match["body"], serve="serve" in words[1:]))
    files = {block.file: block.body for block in blocks if block.file}
    for block in blocks:
        block.files = files
    return blocks


BLOCKS = [block for page in PAGES for block in blocks_of(page)]
TRANSCRIPTS = [block for block in BLOCKS if block.language == "console" and not block.file and not block.serve]
SERVING = [block for block in BLOCKS if block.language == "console" and not block.file and block.serve]
NOT_RUN = [block for block in BLOCKS if block.language != "console" and not block.file]


def commands_and_outputs(body: str, strict: bool = True) -> list[tuple[str, list[str]]]:
    """Split a transcript into (command, expected output lines); strict: nothing before the first command."""
    steps: list[tuple[str, list[str]]] = []
    lines = body.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\") and index < len(lines):
                command += "\n" + lines[index]
                index += 1
            steps.append((command, []))
        elif steps:
            steps[-1][1].append(line)
        elif line.strip() and strict:
            raise AssertionError(f"output before the first command: {line!r}")
    return steps


def tidy(lines: list[str]) -> list[str]:
    lines = [line.rstrip() for line in lines]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether actual fits expected, where a line '...' is any lines and '[..]' any text in a line."""
    pattern = "".join(r"(?:[^\n]*\n)*?" if line == "..." else
                      ".*".join(re.escape(part) for part in line.split("[..]")) + r"\n" for line in expected)
    return re.fullmatch(pattern, "".join(line + "\n" for line in actual)) is not None


def mcprun_bin(folder: Path) -> Path:
    """A folder holding an `mcprun` that execs the program under test."""
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "mcprun"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.join(mcprun_command())} \"$@\"\n")
    wrapper.chmod(0o755)
    return bin_dir


@contextlib.contextmanager
def transcript_folder(block: Block, tmp_path: Path):
    """Yield (folder, env) to run the block's commands in; kill every process started with env after."""
    work = tmp_path / "work"
    shutil.copytree(EXAMPLES, work / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    for name, content in block.files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(content)
    token = uuid.uuid4().hex
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("MCPRUN_") or name == "MCPRUN_CACHE"}
    env.update({"PATH": f"{mcprun_bin(tmp_path)}{os.pathsep}{env['PATH']}", "COLUMNS": "100",
                TOKEN_VARIABLE: token})
    try:
        yield work, env
    finally:
        kill_token(token)


def run_transcript(block: Block, tmp_path: Path) -> list[tuple[str, list[str], list[str], int]]:
    """Run the block's commands in one bash; return (command, expected, actual, status) for each."""
    steps = commands_and_outputs(block.body)
    assert steps, f"{block.name}: a console block with no '$ ' command"
    marker = f"--transcript-{uuid.uuid4().hex}--"
    script = "".join(f"{command}\nprintf '\\n{marker} %s\\n' \"$?\"\n" for command, _ in steps)
    with transcript_folder(block, tmp_path) as (work, env):
        result = subprocess.run(["bash", "-c", script], cwd=work, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=COMMAND_TIMEOUT * len(steps))
    chunks = re.split(rf"\n{re.escape(marker)} (\d+)\n", result.stdout)
    assert len(chunks) == 2 * len(steps) + 1, f"{block.name}: the transcript's shell stopped early:\n{result.stdout}"
    return [(command, expected, tidy(chunks[2 * i].splitlines()), int(chunks[2 * i + 1]))
            for i, (command, expected) in enumerate(steps)]


@pytest.mark.parametrize("block", TRANSCRIPTS, ids=[block.name for block in TRANSCRIPTS])
def test_transcript(block: Block, tmp_path: Path):
    problems = []
    for command, expected, actual, status in run_transcript(block, tmp_path):
        expected = tidy(expected)
        if not matches(expected, actual):
            diff = "\n".join(difflib.unified_diff(expected, actual, "documented", "actual", lineterm=""))
            problems.append(f"$ {command}\n{diff}")
        elif status != 0 and "$?" not in command:
            problems.append(f"$ {command}\nexited {status}; show it with '; echo \"exit $?\"'")
    assert not problems, f"{block.name}:\n" + "\n\n".join(problems)


# -- serving transcripts: the first lines of a server ---------------------------


def could_match(expected: list[str], actual: list[str]) -> bool:
    """Whether more lines after actual could still make it fit expected."""
    return any(matches(expected[:count], actual) for count in range(len(expected) + 1))


def serve_transcript(block: Block, tmp_path: Path,
                     timeout: float = COMMAND_TIMEOUT) -> tuple[list[str], list[str], str]:
    """Start the block's one command; read what it prints until that fits the expected lines or no
    longer can, it exits, or timeout passes; return (expected, the lines read, what went wrong or "")."""
    steps = commands_and_outputs(block.body)
    assert len(steps) == 1, f"{block.name}: a serving transcript has exactly one '$ ' command"
    expected, actual, problem = tidy(steps[0][1]), [], ""
    with transcript_folder(block, tmp_path) as (work, env):
        process = subprocess.Popen(["bash", "-c", steps[0][0]], cwd=work, env=env, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            lines: queue.Queue = queue.Queue()
            threading.Thread(target=lambda: [*map(lines.put, process.stdout), lines.put(None)], daemon=True).start()
            deadline = time.monotonic() + timeout
            while not matches(expected, actual) and could_match(expected, actual):
                try:
                    line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    problem = f"not all printed in {timeout:g}s"
                    break
                if line is None:
                    problem = f"exited {process.wait()} before printing it all"
                    break
                actual.append(line.rstrip())
            ready = next((match for line in actual if (match := READY.match(line))), None)
            if matches(expected, actual) and ready:
                url = re.sub(r"(//[^/]+).*", r"\1/healthz", ready["url"])
                try:  # no proxy from the environment: the server is local
                    urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=10).close()
                except OSError as error:
                    problem = f"GET {url}: {error}"
        finally:
            process.kill()  # bash, or the mcprun it exec'd; transcript_folder then kills the rest by token
            process.wait()
            process.stdin.close()
    in_use = [line for line in actual if re.match(r"mcprun: error: port .* is in use", line)]
    if in_use:
        problem = f"the documented port is taken on this machine ({in_use[0]})"
    elif not problem and not matches(expected, actual):
        problem = "it printed other lines"
    return expected, actual, problem


@pytest.mark.parametrize("block", SERVING, ids=[block.name for block in SERVING])
def test_serving_transcript(block: Block, tmp_path: Path):
    expected, actual, problem = serve_transcript(block, tmp_path)
    diff = "\n".join(difflib.unified_diff(expected, actual, "documented", "actual", lineterm=""))
    assert not problem, f"{block.name}: {problem}\n{diff}"


# -- blocks that are not run: their mcprun commands must parse -----------------


def mcprun_arguments(command: str) -> list[list[str]]:
    """Return the argument lists of the mcprun invocations in a shell command line."""
    lexer = shlex.shlex(command.replace("\\\n", " "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens = list(lexer)
    found = []
    starts = True  # whether the token stands where a command's name does
    for index, token in enumerate(tokens):
        operator = bool(token) and set(token) <= set("();<>|&")
        if starts and "=" not in token and Path(token).name in ("mcprun", "mcprun.py", "mcprun.pyz"):
            arguments = []
            for argument in tokens[index + 1:]:
                if argument and set(argument) <= set("();<>|&"):
                    break
                arguments.append(argument)
            if arguments[:1] != ["-c"]:  # the binary as a Python: /mcprun -c CODE
                found.append(arguments)
        starts = operator or (starts and (re.match(r"\w+=", token) is not None or
                                          Path(token).name.startswith("python") or token in ("exec", "sudo")))
    return found


def commands_of(block: Block) -> list[list[str]]:
    if block.language == "json":
        try:
            config = json.loads(block.body)
        except ValueError:
            return []
        return [[*entry.get("args", [])] for entry in config.get("mcpServers", {}).values()
                if Path(entry.get("command", "")).name == "mcprun"]
    if block.language == "ini":
        lines = [line.split("=", 1)[1] for line in block.body.splitlines() if line.startswith("ExecStart=")]
    else:
        lines = [command for command, _ in commands_and_outputs(block.body, strict=False)]
    return [arguments for line in lines for arguments in mcprun_arguments(line)]


def parse_error(arguments: list[str]) -> str | None:
    """Return what mcprun's parser says against arguments, or None when they parse."""
    sys.path.insert(0, str(ROOT))
    import mcprun

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            mcprun.parse_command_line(arguments)
    except SystemExit as exit:
        return stderr.getvalue().strip() if exit.code else None
    return None


PARSED = [block for block in NOT_RUN if commands_of(block)]


@pytest.mark.parametrize("block", PARSED, ids=[block.name for block in PARSED])
def test_commands_that_are_not_run_parse(block: Block):
    errors = [f"mcprun {shlex.join(arguments)}: {error}" for arguments in commands_of(block)
              if (error := parse_error(arguments))]
    assert errors == []


# -- the convention itself, and what the pages must hold -----------------------


def test_the_pages_hold_transcripts():
    """A convention the parser misses would test nothing: count what it finds."""
    assert len(TRANSCRIPTS) >= 20
    assert sum(len(commands_and_outputs(block.body)) for block in TRANSCRIPTS) >= 30
    assert len(PARSED) >= 10
    assert {block.page.name for block in TRANSCRIPTS} >= {"README.md", "options.md", "air-gap.md"}
    assert len(SERVING) >= 2
    indented = [f"{page.relative_to(ROOT)}:{number}" for page in PAGES
                for number, line in enumerate(page.read_text().splitlines(), 1) if re.match(r"\s+```", line)]
    assert indented == [], "an indented fence is not seen by this test: start it in the first column"


def test_matching():
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"])
    assert matches(["a", "...", "b"], ["a", "b"])
    assert matches(["x [..] z"], ["x 1.2.3 z"])
    assert not matches(["a", "b"], ["a", "c"])
    assert not matches(["a"], ["a", "b"])
    assert not matches(["x [..] z"], ["x 1", "z"])
    assert could_match(["a", "b"], []) and could_match(["a", "b"], ["a"]) and could_match(["a", "...", "c"], ["a", "x"])
    assert not could_match(["a", "b"], ["b"]) and not could_match(["a"], ["a", "b"])
    assert mcprun_arguments('MCPRUN_PORT=1 ./mcprun a.py -t http && echo "exit $?"') == [["a.py", "-t", "http"]]
    assert mcprun_arguments("install -m 755 mcprun /bin/mcprun; python3 mcprun.pyz --version") == [["--version"]]
    assert parse_error(["a.py", "--no-such-option"])


def test_a_wrong_transcript_fails(tmp_path: Path):
    block = Block(ROOT / "README.md", 0, "console", None, "$ mcprun --version\nmcprun 0.0.0-wrong\n")
    [(command, expected, actual, status)] = run_transcript(block, tmp_path)
    assert status == 0 and actual[0].startswith("mcprun ")
    assert not matches(expected, actual)


def test_a_wrong_serving_transcript_fails(tmp_path: Path):
    block = Block(ROOT / "README.md", 0, "console", None,
                  "$ mcprun examples/echo.py\nmcprun: serving 'Wrong' from examples/echo.py over stdio\n", serve=True)
    expected, actual, problem = serve_transcript(block, tmp_path)
    assert problem == "it printed other lines" and actual[0].startswith("mcprun: serving 'Echo'")


def test_a_serving_transcript_on_a_taken_port_says_so(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        block = Block(ROOT / "README.md", 0, "console", None,
                      f"$ mcprun examples/echo.py -t http --port {port}\n...\nmcprun: ready: [..]\n", serve=True)
        expected, actual, problem = serve_transcript(block, tmp_path)
    assert problem.startswith("the documented port is taken on this machine (mcprun: error: port"), problem


def test_readme_is_short_and_links_every_page():
    assert len(README.splitlines()) <= 250
    for page in PAGES[1:]:
        assert f"](docs/{page.name}" in README, f"README.md does not link docs/{page.name}"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_links_reach_a_page_and_heading(page: Path):
    text = page.read_text()
    prose = FENCE.sub("", text)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.*)$", FENCE.sub("", linked.read_text()), re.M)
            if anchor not in {slug(heading) for heading in headings}:
                broken.append(target)
    assert broken == []


def test_readme_keeps_the_build_and_test_commands():
    assert "$ ./build && dist/mcprun examples/echo.py --transport http\n" in README
    assert "$ ./build test\n" in README


# -- the options reference and the exit codes ------------------------------------


def long_options() -> set[str]:
    sys.path.insert(0, str(ROOT))
    import mcprun

    return {option for action in mcprun.build_parser()._actions for option in action.option_strings
            if option.startswith("--")}


def test_every_long_option_is_in_the_options_table():
    table = (ROOT / "docs" / "options.md").read_text().split("## Options", 1)[1].split("\n## ", 1)[0]
    missing = sorted(option for option in long_options() - {"--help"} if f"`{option}`" not in table)
    assert missing == []


def test_exit_codes_documented_in_help_and_readme():
    sys.path.insert(0, str(ROOT))
    import mcprun

    options = (ROOT / "docs" / "options.md").read_text()
    for code in (mcprun.EXIT_OK, mcprun.EXIT_FAILURE, mcprun.EXIT_USAGE):
        assert f"| {code} |" in README
        assert f"| {code} |" in options
        assert f"\n  {code}  " in mcprun.EPILOG
