"""Helpers shared by the command-line tests: run ``analytics-sprig`` in-process, and check
that it ended cleanly (no traceback, the expected exit code, one error line last)."""

from __future__ import annotations

import re
from typing import Tuple

import pytest

from analytics_sprig import cli

#: The one line a failing command ends with: ours (``analytics-sprig spool drain: error:``)
#: or argparse's (``analytics-sprig: error:``).
ERROR_LINE = re.compile(r"^analytics-sprig( [a-z-]+)*: error: \S.*$")


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> Tuple[int, str, str]:
    """``analytics-sprig ARGS``: exit code, stdout, stderr."""
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_clean(code: int, out: str, err: str, expected: int) -> None:
    """No traceback or internal error, exit code ``expected``, and a failure says why in
    its last line."""
    text = out + err
    assert "Traceback" not in text, text[-3000:]
    assert "internal error" not in text, text[-3000:]
    assert code == expected, text[-3000:]
    if code != 0:
        last = err.rstrip("\n").splitlines()[-1]
        assert ERROR_LINE.match(last), err[-2000:]
