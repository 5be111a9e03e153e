"""The README and docs/cli.md say what really happens.

- The README's two Quickstart commands are the documented ones: the first makes and uses a
  virtual environment, the second is exactly the command ``.ci/run`` runs; tox skips missing
  interpreters while ``.ci/run`` refuses to.
- Every ``$ analytics-sprig ...`` line in them parses with the real command line.
- Every CLI sample (a code block starting with ``$ ``) is run for real, in one bash session per
  document, against a local fake Sprig standing in for ``analytics-sprig serve-fake --api-key
  local-key`` on 127.0.0.1:8765; its output must equal the sample, ignoring what changes from
  run to run (timestamps of "now", request ids, the port). A line ``...`` in a sample stands
  for lines left out. On a mismatch the message shows the real output, ready to paste.
- "Run it all locally" runs as written against a real ``serve-fake`` process.
- The library prints nothing through logging unless the app configures logging.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

from analytics_sprig.cli import build_parser
from analytics_sprig.testing import FakeSprig

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
CLI_DOC = ROOT / "docs" / "cli.md"
CI_RUN = ROOT / ".ci" / "run"
TOX_INI = ROOT / "tox.ini"

DOC_PORT = "8765"  # the port the samples show (serve-fake's default)
DOC_KEY = "local-key"


@dataclass
class Block:
    """A fenced code block of a Markdown file."""

    info: str  # what follows the opening fence (bash, python, ...)
    lines: List[str]
    line: int  # 1-based line of the opening fence
    heading: str  # the last ## or ### heading above it
    before: str  # the paragraph just above it


def blocks(path: Path) -> List[Block]:
    found: List[Block] = []
    heading = ""
    paragraph: List[str] = []  # the text since the last blank line
    last: List[str] = []  # the paragraph before that blank line
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("```"):
            end = index + 1
            while not lines[end].startswith("```"):
                end += 1
            found.append(Block(line[3:].strip(), lines[index + 1:end], index + 1, heading,
                               " ".join(paragraph or last)))
            paragraph, last = [], []
            index = end + 1
            continue
        if line.startswith("#"):
            heading, paragraph, last = line.lstrip("#").strip(), [], []
        elif line.strip():
            paragraph.append(line.strip())
        elif paragraph:
            last, paragraph = paragraph, []
        index += 1
    return found


def quickstart_commands() -> Tuple[str, str]:
    shell = [b for b in blocks(README) if b.heading == "Quickstart" and b.info == "bash"]
    assert len(shell) == 2, "the Quickstart has two commands: try it, run the tests"
    assert all(len(b.lines) == 1 for b in shell), "each is one line, to paste as is"
    return shell[0].lines[0], shell[1].lines[0]


# -- the Quickstart commands and CI ---------------------------------------------------------


def test_the_first_command_makes_a_venv_installs_the_cli_extra_and_runs_the_demo() -> None:
    first, _ = quickstart_commands()
    steps = [step.strip() for step in first.split("&&")]
    assert steps[0] == "python3 -m venv .venv"  # only python3 is needed, no system pip
    # Everything after it runs inside the venv, never a bare python or pip.
    for step in steps[1:]:
        assert step.startswith(".venv/bin/"), step
    installs = [s for s in steps if " -m pip install " in s]
    assert any(shlex.split(s)[-1] == ".[cli]" and "-e" in shlex.split(s) for s in installs)
    run = shlex.split(steps[-1])
    assert run[0] == ".venv/bin/python" and (ROOT / run[1]).is_file()


def test_ci_runs_exactly_the_readmes_test_command() -> None:
    _, test_command = quickstart_commands()
    assert test_command.startswith("python3 -m venv .venv && ")
    assert test_command.endswith("&& .venv/bin/tox")
    script = CI_RUN.read_text(encoding="utf-8").splitlines()
    marker = script.index("# The README's test command, exactly as written there:")
    assert script[marker + 1] == test_command
    # Nothing after it but blank lines and comments: its exit code is CI's.
    assert all(not line.strip() or line.lstrip().startswith("#")
               for line in script[marker + 2:])
    # ... and CI makes a missing interpreter a failure, before running it.
    before = "\n".join(script[:marker])
    assert re.search(r"^export TOX_SKIP_MISSING_INTERPRETERS=false$", before, re.MULTILINE)


def test_tox_skips_missing_interpreters_but_lists_all_five() -> None:
    text = TOX_INI.read_text(encoding="utf-8")
    assert re.search(r"^skip_missing_interpreters = true$", text, re.MULTILINE)
    env_list = re.search(r"^env_list = (.*)$", text, re.MULTILINE)
    assert env_list is not None
    envs = [e.strip() for e in env_list.group(1).split(",")]
    assert envs[:5] == ["py39", "py310", "py311", "py312", "py313"]
    # And .ci/run insists on exactly those five.
    assert "for minor in 3.9 3.10 3.11 3.12 3.13; do" in CI_RUN.read_text(encoding="utf-8")


# -- documented command lines parse ---------------------------------------------------------


def documented_invocations() -> Iterator[Tuple[str, int, List[str]]]:
    for path in (README, CLI_DOC):
        for block in blocks(path):
            for line in block.lines:
                if not line.startswith("$ "):
                    continue
                words = shlex.split(line[2:])
                while words and re.match(r"^[A-Z_]+=", words[0]):
                    words = words[1:]  # VAR=value before the command
                if words and words[0] == "analytics-sprig":
                    yield path.name, block.line, words[1:]


def test_every_documented_command_line_parses() -> None:
    seen = 0
    for name, line, argv in documented_invocations():
        try:
            build_parser().parse_args(argv)
        except SystemExit:  # pragma: no cover - the assertion below says which
            pytest.fail(f"{name}, block at line {line}: analytics-sprig {' '.join(argv)}")
        seen += 1
    assert seen >= 8


# -- the samples match real output ----------------------------------------------------------

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NOW_MS = re.compile(r'("timestamp":)1[7-9]\d{11}\b')  # "now" in epoch ms (2023-2033)


def normalize(text: str, port: Optional[int] = None) -> List[str]:
    """Lines with the run-to-run parts replaced, trailing spaces dropped."""
    if port is not None:
        text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{DOC_PORT}")
    text = _UUID.sub("<request id>", text)
    text = _NOW_MS.sub(r"\1<now>", text)
    return [line.rstrip() for line in text.splitlines()]


def matches(expected: List[str], actual: List[str]) -> bool:
    """``actual == expected``, where a ``...`` line in ``expected`` matches any lines."""
    parts: List[List[str]] = [[]]
    for line in expected:
        if line == "...":
            parts.append([])
        else:
            parts[-1].append(line)
    if len(parts) == 1:
        return actual == expected
    first, *middle, last = parts
    if actual[: len(first)] != first or (last and actual[-len(last):] != last):
        return False
    position, end = len(first), len(actual) - len(last)
    for part in middle:
        while position + len(part) <= end and actual[position:position + len(part)] != part:
            position += 1
        if position + len(part) > end:
            return False
        position += len(part)
    return position <= end


def samples(path: Path) -> List[Block]:
    """The blocks of ``path`` that show commands and their output."""
    chosen = []
    for block in blocks(path):
        if not block.lines or not block.lines[0].startswith("$ "):
            continue
        # serve-fake runs until stopped: its samples are checked by
        # test_run_it_all_locally (README) or left to tests/test_fake_server.py (docs).
        if "serve-fake" in block.heading or "serve-fake" in block.lines[0]:
            continue
        chosen.append(block)
    return chosen


def export_sample() -> str:
    """The sample export both documents use: the block under "Sample input, `export.jsonl`"."""
    for block in blocks(CLI_DOC):
        if block.before.startswith("Sample input, `export.jsonl`"):
            return "\n".join(block.lines) + "\n"
    raise AssertionError("docs/cli.md has no sample input block")


@dataclass
class Sample:
    """A sample block, what it shows, and what running its commands really printed."""

    block: Block
    expected: List[str]  # normalized
    actual: List[str]  # normalized
    real: List[Tuple[str, str]]  # (command line, its output with the port shown as 8765)


def run_samples(path: Path, tmp_path: Path) -> List[Sample]:
    """Run every sample of ``path``, in order, in one bash session."""
    chosen = samples(path)
    (tmp_path / "export.jsonl").write_text(export_sample(), encoding="utf-8")
    with FakeSprig(api_key=DOC_KEY) as sprig:
        script = [
            "set -u",
            f'analytics-sprig() {{ {shlex.quote(sys.executable)} -m analytics_sprig "$@"; }}',
        ]
        for number, block in enumerate(chosen):
            for line in block.lines:
                if line.startswith("$ "):
                    command = line[2:].replace(f"127.0.0.1:{DOC_PORT}",
                                               f"127.0.0.1:{sprig.port}")
                    # The marker must not change $? (a sample may `echo $?`).
                    script.append(f"__status=$?; echo '@@sample {number}@@'; "
                                  "(exit $__status)")
                    script.append(f"{{ {command}\n}} 2>&1")
        env = {k: v for k, v in os.environ.items() if k != "SPRIG_API_KEY"}
        env.update(PYTHONUNBUFFERED="1", COLUMNS="100", NO_COLOR="1", TERM="dumb")
        done = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=240)
        port = sprig.port
    assert done.stderr == "", done.stderr
    pieces = re.split(r"^@@sample (\d+)@@\n", done.stdout, flags=re.MULTILINE)[1:]
    outputs: List[List[str]] = [[] for _ in chosen]
    for number, output in zip(pieces[::2], pieces[1::2]):
        outputs[int(number)].append(output.replace(f"127.0.0.1:{port}",
                                                   f"127.0.0.1:{DOC_PORT}"))
    results = []
    for block, printed in zip(chosen, outputs):
        commands = [line for line in block.lines if line.startswith("$ ")]
        assert len(printed) == len(commands), done.stdout[-2000:]
        expected = normalize("\n".join(line for line in block.lines
                                       if not line.startswith("$ ")))
        results.append(Sample(block, expected, normalize("".join(printed)),
                              list(zip(commands, printed))))
    return results


@pytest.mark.skipif(shutil.which("bash") is None, reason="the samples are bash sessions")
@pytest.mark.parametrize("doc", [README, CLI_DOC], ids=lambda p: p.name)
def test_documented_samples_match_real_output(doc: Path, tmp_path: Path) -> None:
    results = run_samples(doc, tmp_path)
    assert len(results) >= 3
    wrong = []
    for sample in results:
        if not matches(sample.expected, sample.actual):
            diff = "\n".join(difflib.unified_diff(sample.expected, sample.actual, "documented",
                                                  "real", lineterm=""))
            wrong.append(f"{doc.name}, sample at line {sample.block.line} "
                         f"({sample.block.lines[0]}):\n{diff}")
    assert not wrong, ("\n\n".join(wrong) + "\n\nTo rewrite the samples from real runs: "
                       "python tests/test_readme.py --update")


def test_the_matcher_honours_ellipses() -> None:
    assert matches(["a", "...", "c"], ["a", "b", "b", "c"])
    assert matches(["...", "b", "..."], ["a", "b", "c"])
    assert not matches(["a", "...", "c"], ["a", "b"])
    assert not matches(["a", "b"], ["a", "b", "c"])
    assert not matches(["...", "x", "..."], ["a", "b"])


# -- run it all locally ---------------------------------------------------------------------


def local_run_blocks() -> Tuple[Block, Block, Block]:
    """The "Run it all locally" section: serve-fake's start, the Python, serve-fake's log."""
    section = [b for b in blocks(README) if b.heading == "Run it all locally"]
    assert len(section) == 3, [b.lines[:1] for b in section]
    return section[0], section[1], section[2]


def test_run_it_all_locally(tmp_path: Path) -> None:
    start, program, log = local_run_blocks()
    assert start.lines[0] == f"$ analytics-sprig serve-fake --api-key {DOC_KEY}"
    assert program.info == "python"
    code = "\n".join(program.lines)
    assert 'analytics.host = "http://127.0.0.1:8765"' in code
    assert 'endpoint="http://127.0.0.1:8765"' in code
    env = {k: v for k, v in os.environ.items() if k != "SPRIG_API_KEY"}
    env["PYTHONUNBUFFERED"] = "1"
    server = subprocess.Popen(
        [sys.executable, "-m", "analytics_sprig", *shlex.split(start.lines[0][2:])[1:],
         "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert server.stdout is not None
        first = server.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", first)
        assert match, first + (server.stderr.read() if server.stderr else "")
        port = int(match.group(1))
        script = tmp_path / "local.py"
        script.write_text(code.replace("127.0.0.1:8765", f"127.0.0.1:{port}"), encoding="utf-8")
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
        # The program's own output is documented in comments: "print(...)  # 2".
        printed = [line.split("#")[1].strip() for line in program.lines
                   if line.startswith("print(") and "#" in line]
        assert done.stdout.split() == printed
        server.terminate()
        rest, _ = server.communicate(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    documented = normalize("\n".join(start.lines[1:]))
    assert normalize(first, port) == documented
    # Segment's and Sprig's requests go out from two threads: either may come first.
    assert sorted(normalize(rest)) == sorted(normalize("\n".join(log.lines)))


# -- what the README says about logs --------------------------------------------------------


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)


def test_the_library_prints_nothing_when_the_app_configured_no_logging() -> None:
    code = ("import logging, analytics_sprig\n"
            "logging.getLogger('analytics_sprig').warning('a library warning')\n"
            "logging.getLogger('analytics_sprig').error('a library error')\n")
    done = _python(code)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""


def test_the_apps_logging_configuration_shows_the_librarys_warnings() -> None:
    done = _python("import logging, analytics_sprig\nlogging.basicConfig()\n"
                   "logging.getLogger('analytics_sprig').warning('a library warning')\n")
    assert done.stderr == "WARNING:analytics_sprig:a library warning\n"


def update(path: Path) -> int:
    """Rewrite the samples of ``path`` that differ from a real run; return how many.

    Abridged samples (with a ``...`` line) are reported, not rewritten: choose their lines by
    hand.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        results = run_samples(path, Path(tmp))
    lines = path.read_text(encoding="utf-8").splitlines()
    changed = 0
    for sample in reversed(results):  # from the end, so earlier line numbers stay right
        if matches(sample.expected, sample.actual):
            continue
        if "..." in sample.expected:
            print(f"{path.name}:{sample.block.line}: abridged sample differs; edit it by hand")
            continue
        body = []
        for command, output in sample.real:
            body.append(command)
            body.extend(line.rstrip() for line in output.splitlines())
        start = sample.block.line  # the fence's index + 1 is the first line of the block
        lines[start:start + len(sample.block.lines)] = body
        changed += 1
        print(f"{path.name}:{sample.block.line}: rewritten from a real run")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return changed


if __name__ == "__main__":  # pragma: no cover - a maintenance tool
    if sys.argv[1:] != ["--update"]:
        sys.exit("usage: python tests/test_readme.py --update")
    for document in (README, CLI_DOC):
        update(document)
