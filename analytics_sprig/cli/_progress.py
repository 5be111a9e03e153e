"""The progress display of ``analytics-sprig replay`` (stderr, only on a terminal)."""

from __future__ import annotations

import importlib
import sys
import time
from typing import Any, Optional

from ._common import plural, say


class Progress:
    """No progress display: notes go straight to stderr."""

    def update(self, lines: int, position: int, sent: int, *, force: bool = False) -> None:
        """Record progress: lines and bytes read, messages settled (sent, failed, dropped)."""

    def note(self, text: str) -> None:
        """Print a line on stderr without garbling the display."""
        say(text)

    def close(self) -> None:
        """Remove the display."""


class CounterProgress(Progress):
    """A one-line counter on stderr, for terminals without ``rich``."""

    def __init__(self, total: Optional[int]) -> None:
        self._total = total
        self._shown = 0.0
        self._text = ""

    def update(self, lines: int, position: int, sent: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if now - self._shown < 0.2 and not force:
            return
        self._shown = now
        percent = f" ({100 * position // self._total}% of the file)" if self._total else ""
        text = (f"replaying: {plural(lines, 'line')} read{percent}, "
                f"{plural(sent, 'message')} settled")
        sys.stderr.write("\r" + text.ljust(len(self._text)))
        sys.stderr.flush()
        self._text = text

    def note(self, text: str) -> None:
        sys.stderr.write("\r" + " " * len(self._text) + "\r")
        say(text)
        if self._text:
            sys.stderr.write(self._text)
        sys.stderr.flush()

    def close(self) -> None:
        if self._text:
            sys.stderr.write("\r" + " " * len(self._text) + "\r")
            sys.stderr.flush()


class RichProgress(Progress):
    """A ``rich`` progress bar (the ``cli`` extra) on stderr."""

    def __init__(self, total: Optional[int]) -> None:
        # Imported by name so the package type-checks and runs without the extra.
        progress = importlib.import_module("rich.progress")
        console = importlib.import_module("rich.console").Console(stderr=True)
        self._progress: Any = progress.Progress(
            progress.TextColumn("replaying"),
            progress.BarColumn(),
            progress.DownloadColumn(),
            progress.TextColumn("{task.fields[lines]} read, {task.fields[sent]} settled"),
            progress.TimeElapsedColumn(),
            console=console,
            transient=True,
            # stdout piped elsewhere (dry-run output) must not be drawn into the terminal.
            redirect_stdout=sys.stdout.isatty(),
        )
        self._task = self._progress.add_task("replay", total=total, lines="0 lines",
                                             sent="0 messages")
        self._shown = 0.0
        self._progress.start()

    def update(self, lines: int, position: int, sent: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if now - self._shown < 0.1 and not force:
            return
        self._shown = now
        self._progress.update(self._task, completed=position, lines=plural(lines, "line"),
                              sent=plural(sent, "message"))

    def note(self, text: str) -> None:
        # Escape what UTF-8 cannot hold (a lone surrogate from a file name).
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        self._progress.console.print(text, markup=False, highlight=False)

    def close(self) -> None:
        self._progress.stop()


def make_progress(enabled: bool, total: Optional[int]) -> Progress:
    """A rich bar, a plain counter, or nothing (``--no-progress``, stderr not a terminal)."""
    if not enabled or not sys.stderr.isatty():
        return Progress()
    try:
        return RichProgress(total)
    except ImportError:
        return CounterProgress(total)
