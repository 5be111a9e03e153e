"""Every ``analytics-sprig`` command, fed hostile input: never a traceback, always an exit code.

Each case runs the real command line (``cli.main``, in-process, against a local fake Sprig)
on one input from a corpus of bad ones — binary junk, NUL bytes, huge lines, invalid UTF-8,
JSON of every non-object type, deep nesting, lone surrogates, unknown call types, broken and
mislabelled gzip, other compressions, empty files, missing paths, directories, unreadable
files — and checks the documented exit code, that no traceback (nor the last-resort
"internal error" line) was printed, that ``replay`` always ends with its summary, and that
what was read before a read error was still sent. A few run as real processes with a real
stdin pipe.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
from cli_support import assert_clean
from cli_support import run_cli as run

from analytics_sprig.cli import _input
from analytics_sprig.testing import FakeSprig

KEY = "hostile-key"


def good(i: int, user: str = "u-1") -> bytes:
    return json.dumps({"type": "track", "userId": user, "event": f"E{i}",
                       "timestamp": "2024-05-01T12:00:00Z"}).encode() + b"\n"


def junk(size: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    data = bytes(rng.getrandbits(8) for _ in range(size))
    return b"\x00" + data  # not gzip, bzip2, zip... whatever the seed gives


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth + b"\n"


GZ = gzip.compress(b"".join(good(i) for i in range(40)))
TRUNCATED = GZ[: len(GZ) // 2]
CORRUPT = GZ[:12] + bytes(b ^ 0x5A for b in GZ[12:-8]) + GZ[-8:]

#: name -> (file bytes, exit code of replay, messages in it that reach Sprig)
CORPUS: Dict[str, Tuple[bytes, int, int]] = {
    "binary junk": (junk(20000), 1, 0),
    "binary junk then a message": (junk(3000) + b"\n" + good(1), 0, 1),
    "NUL bytes": (b"\x00" * 5000 + b"\n" + good(1) + b"\x00\n", 0, 1),
    "NUL inside JSON strings": (b'{"type":"track","userId":"u\\u0000","event":"E\\u0000"}\n', 0,
                                1),
    "a 2 MiB line": (good(1) + b'{"type":"track","userId":"u","event":"' + b"x" * (2 << 20)
                     + b'"}\n' + good(2), 0, 2),
    "one huge line without newline": (b"y" * (3 << 20), 1, 0),
    "invalid UTF-8": (b'{"type":"track","userId":"\xff\xfe","event":"E"}\n' + good(1), 0, 1),
    "JSON of every non-object type": (b'1\n-2.5e300\n"text"\ntrue\nfalse\nnull\n[]\n[{}]\n',
                                      1, 0),
    "huge numbers": (b"1" * 5000 + b"\n" + b'{"type":"track","userId":"u","event":"E",'
                     b'"timestamp":' + b"9" * 400 + b"}\n", 0, 1),
    "NaN and Infinity": (b'{"type":"identify","userId":"u","traits":{"a":NaN,"b":-Infinity}}\n',
                         0, 1),
    "deeply nested arrays": (nested(100000), 1, 0),
    "deeply nested objects": (b'{"a":' * 50000 + b"1" + b"}" * 50000 + b"\n", 1, 0),
    "deeply nested traits": (b'{"type":"identify","userId":"u","traits":' + b'{"a":' * 900
                             + b"1" + b"}" * 900 + b"}\n", 0, 1),
    "lone surrogates": (b'{"type":"identify","userId":"u\\ud800","traits":{"\\udc00":"\\udfff"}}\n'
                        b'{"type":"track","userId":"\\udbff","event":"\\ud800"}\n', 0, 2),
    "unknown call types": (b'{"type":"banana","userId":"u"}\n{"type":"Track","userId":"u"}\n'
                           b'{"type":"","userId":"u"}\n{"type":5}\n{"type":null}\n'
                           b'{"type":["track"]}\n{"userId":"u"}\n', 1, 0),
    "truncated gzip": (TRUNCATED, 2, -1),  # -1: as many as were read before the error
    "corrupt gzip": (CORRUPT, 2, -1),
    "gzip of junk": (gzip.compress(junk(5000)), 1, 0),
    "UTF-16 text": ('{"type":"track","userId":"u","event":"E"}\n'.encode("utf-16"), 2, 0),
    "bzip2 data": (b"BZh91AY&SY" + junk(100), 2, 0),
    "zip archive": (b"PK\x03\x04" + junk(100), 2, 0),
    "empty": (b"", 1, 0),
    "blank lines only": (b"\n \n\t\r\n\n", 1, 0),
    "a BOM then messages": (b"\xef\xbb\xbf" + good(1) + good(2), 0, 2),
    "CRLF line ends": (good(1).replace(b"\n", b"\r\n") + good(2).replace(b"\n", b"\r\n"), 0, 2),
}


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPRIG_API_KEY", raising=False)
    monkeypatch.setenv("COLUMNS", "100")


@pytest.fixture(scope="module")
def sprig() -> Iterator[FakeSprig]:
    with FakeSprig(api_key=KEY) as server:
        yield server





def sent_users(sprig: FakeSprig) -> int:
    return sum(len(r.json.get("events", [])) or 1 for r in sprig.requests
               if r.path == "/v2/users" and r.status == 202 and isinstance(r.json, dict))


@pytest.mark.parametrize("name", list(CORPUS))
@pytest.mark.parametrize("mode", ["live", "dry-run", "stdin"])
def test_replay_on_hostile_input(
    name: str, mode: str, tmp_path: Path, sprig: FakeSprig,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    data, expected, reaching = CORPUS[name]
    path = tmp_path / ("export.jsonl.gz" if "gzip" in name else "export.jsonl")
    path.write_bytes(data)
    sprig.reset()
    if mode == "dry-run":
        code, out, err = run(capsys, "replay", str(path), "--dry-run")
        summary, requests = err, out.splitlines()
    else:
        source = str(path)
        if mode == "stdin":
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
            source = "-"
        code, out, err = run(capsys, "replay", source, "--api-key", KEY, "--endpoint",
                             sprig.url, "--no-progress")
        summary, requests = out, []
    assert_clean(code, out, err, expected)
    assert "Replay summary" in summary
    # Whatever was read before a read error still went out (or would have).
    if mode == "dry-run":
        assert all(line.startswith("POST /v2/users {") for line in requests)
        shown = sum(max(1, len(json.loads(line[15:]).get("events", []))) for line in requests)
    else:
        shown = sent_users(sprig)
    if reaching >= 0:
        assert shown == reaching, summary
        return
    # A read error: the lines before it (maybe none) were sent, and the summary says so.
    assert shown < 40, summary
    if shown:
        assert re.search(rf"(delivered|would send)\s+{shown}\s", summary), summary
        assert "after line" in err.splitlines()[-1]
    else:
        assert "no line was read" in summary
    assert re.search(r"the gzip data is (truncated|corrupt)", err.splitlines()[-1])


def test_a_text_file_named_gz_is_read_as_text_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "export.jsonl.gz"
    path.write_bytes(good(1) + good(2))
    code, out, err = run(capsys, "replay", str(path), "--dry-run")
    assert_clean(code, out, err, 0)
    assert "is not gzip-compressed" in err and "reading it as plain text" in err
    assert len(out.splitlines()) == 1  # one user's two events, coalesced


def test_gzip_is_recognised_by_its_bytes_whatever_the_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "export.jsonl"
    path.write_bytes(GZ)
    code, out, err = run(capsys, "replay", str(path), "--dry-run")
    assert_clean(code, out, err, 0)
    assert re.search(r"would send\s+40\s+in 1 request\b", err)


def test_malformed_lines_are_reported_with_their_numbers_then_only_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "export.jsonl"
    path.write_bytes(b"{bad\n" * 250 + good(1))
    code, out, err = run(capsys, "replay", str(path), "--dry-run")
    assert_clean(code, out, err, 0)
    notes = [line for line in err.splitlines() if line.startswith("line ")]
    assert len(notes) == 100 and notes[0].startswith("line 1: skipped, invalid JSON")
    assert "counted in the summary but not shown" in err
    assert re.search(r"malformed\s+250\s+\(lines 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, \.\.\.\)", err)


def test_unknown_call_types_are_named_with_their_line_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "export.jsonl"
    path.write_bytes(good(1) + b'{"type":"banana","userId":"u"}\n' + b'{"type":"group",'
                     b'"userId":"u","groupId":"g"}\n' + b'{"type":"' + b"z" * 100 + b'"}\n')
    code, out, err = run(capsys, "replay", str(path), "--dry-run")
    assert_clean(code, out, err, 0)
    assert 'line 2: skipped, unknown call type "banana"' in err
    assert f'line 4: skipped, unknown call type "{"z" * 40}"...' in err
    # Only the real group call is a type skip.
    assert re.search(r"skipped\s+1\s+\(type 1\)", err)
    assert re.search(r"malformed\s+2\s+\(lines 2, 4\)", err)


@pytest.mark.parametrize("kind", ["missing", "directory", "unreadable", "fifo-like stdin"])
def test_replay_of_an_unreadable_input_exits_2_with_the_summary(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "export.jsonl"
    if kind == "directory":
        path.mkdir()
    elif kind == "unreadable":
        path.write_bytes(good(1))
        real_open = open

        def denied(file: Any, *args: Any, **kwargs: Any) -> Any:
            if str(file) == str(path):
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        # As root, chmod 000 does not deny reading: make open() deny it.
        monkeypatch.setattr(_input, "open", denied, raising=False)
    elif kind == "fifo-like stdin":
        monkeypatch.setattr(sys, "stdin", None)
    source = "-" if kind == "fifo-like stdin" else str(path)
    code, out, err = run(capsys, "replay", source, "--dry-run")
    assert_clean(code, out, err, 2)
    assert "Replay summary (dry run: nothing was sent): no line was read." in err
    expected = {"missing": "No such file or directory", "directory": "Is a directory",
                "unreadable": "Permission denied", "fifo-like stdin": "no standard input"}
    assert expected[kind] in err.splitlines()[-1]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="needs a user that file permissions apply to")
def test_replay_of_a_file_without_read_permission(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "export.jsonl"
    path.write_bytes(good(1))
    path.chmod(0)
    code, out, err = run(capsys, "replay", str(path), "--dry-run")
    assert_clean(code, out, err, 2)
    assert "Permission denied" in err


# -- purge ----------------------------------------------------------------------------------

PURGE_CASES: Dict[str, Tuple[Callable[[Path], List[str]], int]] = {
    "binary junk": (lambda d: ["--ids-file", write(d, junk(5000))], 2),
    "invalid UTF-8": (lambda d: ["--ids-file", write(d, b"user-1\nus\xe9r-2\n")], 2),
    "encoded surrogates": (lambda d: ["--emails-file", write(d, b"\xed\xa0\x80@x.co\n")], 2),
    "NUL bytes": (lambda d: ["--ids-file", write(d, b"user-\x001\n\x00\n")], 0),
    "a 2 MiB id": (lambda d: ["--ids-file", write(d, b"x" * (2 << 20) + b"\n")], 0),
    "JSON values as ids": (lambda d: ["--ids-file", write(d, b'1\nnull\n[]\n{"a":1}\n')], 0),
    "a lone surrogate argument": (lambda d: ["--user-id", "\udcff", "--email", "\ud800@x"], 0),
    "empty file": (lambda d: ["--ids-file", write(d, b"")], 2),
    "comments only": (lambda d: ["--emails-file", write(d, b"# nothing\n\n")], 2),
    "missing file": (lambda d: ["--ids-file", str(d / "missing.txt")], 2),
    "directory": (lambda d: ["--ids-file", str(d)], 2),
    "bad delay": (lambda d: ["--user-id", "u", "--delay-seconds", "soon"], 2),
    "negative retries": (lambda d: ["--user-id", "u", "--max-retries", "-3"], 2),
    "bad endpoint": (lambda d: ["--user-id", "u", "--endpoint", "ftp://x"], 2),
}


def write(directory: Path, data: bytes) -> str:
    path = directory / f"list-{len(list(directory.iterdir()))}.txt"
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("name", list(PURGE_CASES))
def test_purge_on_hostile_input(
    name: str, tmp_path: Path, sprig: FakeSprig, capsys: pytest.CaptureFixture[str]
) -> None:
    make_args, expected = PURGE_CASES[name]
    args = make_args(tmp_path)
    if "--endpoint" not in args:
        args += ["--endpoint", sprig.url]
    code, out, err = run(capsys, "purge", *args, "--api-key", KEY)
    assert_clean(code, out, err, expected)
    if expected == 0:
        assert out.rstrip().splitlines()[-1].startswith("Submitted ")


# -- demo and serve-fake --------------------------------------------------------------------


class _JunkTerminal(io.TextIOWrapper):
    """A "terminal" whose typed answer is not text."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("columns", ["0", "-3", "abc", "100000", "1"])
def test_demo_with_odd_terminal_widths(
    columns: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    code, out, err = run(capsys, "demo")
    assert_clean(code, out, err, 0)
    assert "What Sprig received (POST /v2/users): 2 requests" in out


def test_demo_with_an_undecodable_answer_stays_local(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPRIG_API_KEY", "some-real-key")
    monkeypatch.setattr(sys, "stdin", _JunkTerminal(io.BytesIO(b"\xff\xfe\x00y\n")))
    code, out, err = run(capsys, "demo", "--json")
    assert_clean(code, out, err, 0)
    assert json.loads(out)["sprig_target"] == "local"
    assert "some-real-key" not in out + err


@pytest.mark.parametrize(
    "args",
    [
        ["demo", "--endpoint", "not a url"],
        ["demo", "--endpoint", "http://example.com"],
        ["demo", "--layout", "diagonal"],
        ["demo", "--json", "extra"],
        ["replay", "-", "--max-requests-per-second", "nan"],
        ["replay", "-", "--max-requests-per-second", "-1"],
        ["replay", "-", "--max-retries", "1e3"],
        ["replay", "-", "--endpoint", "https://"],
        ["serve-fake", "--port", "abc"],
        ["serve-fake", "--port", "-1"],
        ["serve-fake", "--port", "70000"],
        ["serve-fake", "--bogus"],
        ["serve-fake", "--api-key"],
        ["purge"],
        ["\udcff"],
    ],
)
def test_bad_flags_exit_2_with_one_line(
    args: List[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, *args)
    assert "Traceback" not in out + err and "internal error" not in out + err
    assert code == 2, out + err
    assert err.strip(), "a usage error says something"


def test_serve_fake_on_an_unresolvable_host_fails_cleanly(
    capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "serve-fake", "--host", "256.256.256.256", "--port", "0")
    assert_clean(code, out, err, 1)
    assert "cannot listen on 256.256.256.256:0" in err


# -- real processes -------------------------------------------------------------------------


def cli_process(args: List[str], data: bytes, tmp_path: Path) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "SPRIG_API_KEY"}
    return subprocess.run([sys.executable, "-m", "analytics_sprig", *args], input=data,
                          capture_output=True, timeout=60, env=env, cwd=tmp_path)


def test_gzip_piped_on_stdin_is_decompressed(tmp_path: Path) -> None:
    done = cli_process(["replay", "-", "--dry-run"], GZ, tmp_path)
    assert done.returncode == 0, done.stderr
    assert b"Traceback" not in done.stderr
    assert len(done.stdout.splitlines()) == 1  # one user: one coalesced request
    assert re.search(rb"would send\s+40\s+in 1 request\b", done.stderr)


def test_truncated_gzip_on_stdin_exits_2_after_the_summary(tmp_path: Path) -> None:
    # Big enough that the first half decompresses to whole lines.
    data = gzip.compress(b"".join(good(i, user=f"u-{i}") for i in range(5000)))
    done = cli_process(["replay", "-", "--dry-run"], data[: len(data) // 2], tmp_path)
    assert done.returncode == 2, done.stderr
    assert b"Traceback" not in done.stderr
    lines = done.stderr.decode().splitlines()
    assert lines[-1].startswith("analytics-sprig: error: cannot read stdin after line ")
    assert "truncated" in lines[-1]
    assert any(line.startswith("Replay summary") for line in lines)
    read = int(lines[-1].split("after line ")[1].split(":")[0])
    assert 0 < read < 5000 and len(done.stdout.splitlines()) == read  # all sent (printed)


def test_a_non_utf8_file_name_and_strict_stderr(tmp_path: Path) -> None:
    if sys.platform == "darwin":
        pytest.skip("macOS file names are always UTF-8")
    name = os.fsdecode(b"export-\xff.jsonl")
    env = {k: v for k, v in os.environ.items() if k != "SPRIG_API_KEY"}
    env["PYTHONIOENCODING"] = "utf-8:strict"  # stderr must not choke on the surrogate
    done = subprocess.run([sys.executable, "-m", "analytics_sprig", "replay",
                           os.fsencode(name), "--dry-run"], capture_output=True,
                          timeout=60, env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert b"Traceback" not in done.stderr
    assert b"No such file or directory" in done.stderr


def test_a_file_of_junk_as_a_real_process(tmp_path: Path) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(junk(50000, seed=3))
    done = cli_process(["replay", str(path), "--dry-run"], b"", tmp_path)
    assert done.returncode == 1
    assert b"Traceback" not in done.stderr
    assert done.stderr.decode("utf-8", "replace").splitlines()[-1].startswith(
        "analytics-sprig: error: nothing to replay in ")
