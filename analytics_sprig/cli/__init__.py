"""The ``analytics-sprig`` command line (also ``python -m analytics_sprig``).

Commands:

- ``demo``: a realistic session through analytics-python and :class:`SprigDestination`,
  against local fakes of Segment's and Sprig's APIs; prints what each side received.
- ``replay FILE``: forward Segment messages from a JSON-lines export to Sprig, through the
  destination's routing, mapping, coalescing and delivery (``--dry-run`` prints instead).
- ``purge``: privacy deletion of visitors by user id or email.
- ``spool status PATH`` / ``spool drain PATH``: what a destination's spool file holds, and
  sending it now.
- ``serve-fake``: run the local fake Sprig server in the foreground.

Exit codes: 0 success; 1 something failed (messages failed or dropped, a purge request
failed, the API key was rejected, the input held no message); 2 usage error (bad option,
missing API key, invalid endpoint, unreadable input); 130 interrupted. The API key is never
printed, and no input makes a command print a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from types import FrameType
from typing import Any, Iterator, List, Optional

from .._errors import ConfigurationError, SprigError
from .._version import __version__
from ..sprig._api import DEFAULT_ENDPOINT
from ..testing import fake_server
from . import _demo_cmd, _purge, _replay, _spool
from ._common import (
    API_KEY_ENV,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    UsageError,
)
from ._common import err as _err
from ._common import note as _note
from ._common import say as _say
from ._demo import print_report

__all__ = ["main", "print_report"]

# Each command lives in its own module: demo in _demo_cmd (report in _demo), replay in
# _replay (input in _input, progress display in _progress), purge in _purge, spool in
# _spool; serve-fake,
# the parser and main() are here; _common holds what they share.


# -- serve-fake -----------------------------------------------------------------------------


def _interrupt(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt


def _seconds(text: str) -> float:
    """A finite number of seconds >= 0 (an argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < float("inf"):  # NaN fails this too
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def _burst(text: str) -> float:
    """How many requests the rate limit's bucket holds: a number >= 1 (an argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 1, got {text}")
    return value


def _cmd_serve_fake(args: argparse.Namespace) -> int:
    if args.jitter > args.latency:
        raise UsageError(f"--jitter ({args.jitter:g} s) must not exceed --latency "
                         f"({args.latency:g} s)")
    if args.rate_limit is None:
        for flag, value in (("--rate-limit-burst", args.rate_limit_burst),
                            ("--retry-after", args.retry_after)):
            if value is not None:
                raise UsageError(f"{flag} needs --rate-limit")
    # SIGTERM (docker stop, kill) stops the server as cleanly as Ctrl-C.
    previous: Any = None
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        fake_server.serve(args.host, args.port, args.api_key, out=sys.stdout,
                          latency=args.latency, jitter=args.jitter,
                          rate_limit=args.rate_limit, rate_limit_burst=args.rate_limit_burst,
                          rate_limit_retry_after=args.retry_after)
    except ValueError as exc:  # an option the checks above let through
        raise UsageError(str(exc)) from None
    except OSError as exc:
        _err(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        pass  # a signal that arrived outside serve()'s own loop
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_OK


# -- parser and main ------------------------------------------------------------------------


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _port(text: str) -> int:
    value = _non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port: {value}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but a message that stderr cannot encode is escaped, not a traceback."""

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            _say(message.rstrip("\n"), sys.stderr if file is None else file)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``analytics-sprig`` command."""
    common = _Parser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more of the library's log on stderr (default: errors; "
                             "-v: warnings and info, -vv: debug, each retry included)")

    sprig = _Parser(add_help=False)
    sprig.add_argument("--api-key", metavar="KEY",
                       help=f"Sprig API key (default: ${API_KEY_ENV}; prefer the variable, "
                            "command lines are visible to other users)")
    sprig.add_argument("--endpoint", default=DEFAULT_ENDPOINT, metavar="URL",
                       help=f"Sprig API base URL (default: {DEFAULT_ENDPOINT})")
    sprig.add_argument("--max-retries", type=_non_negative_int, default=10, metavar="N",
                       help="retries per request on 408/429/5xx/network errors (default: 10)")

    parser = _Parser(
        prog=PROG,
        description="Tools for analytics-sprig: a demo, replaying Segment exports to Sprig, "
                    "privacy purges, a destination's spool, and a local fake Sprig server.",
        epilog="Exit codes: 0 ok, 1 something failed, 2 usage error, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", parents=[common], help="run a session against local servers and show both sides",
        description="Send a realistic session through analytics-python with SprigDestination "
                    "against local fakes of Segment's and Sprig's APIs, then print what each "
                    f"side received and the destination's stats. With ${API_KEY_ENV} set and "
                    "an interactive terminal, offers to send to the real Sprig instead.",
    )
    demo.add_argument("--json", action="store_true", help="print the result as JSON")
    demo.add_argument("--endpoint", default=DEFAULT_ENDPOINT, metavar="URL",
                      help="the Sprig API used if you choose to send to your real Sprig "
                           f"(default: {DEFAULT_ENDPOINT})")
    demo.add_argument("--layout", choices=("auto", "columns", "sections"), default="auto",
                      help="side by side, or one after the other (default: side by side on "
                           "a terminal of 150 columns or more)")
    demo.set_defaults(func=_demo_cmd.run)

    replay = commands.add_parser(
        "replay", parents=[common, sprig], help="forward a JSON-lines Segment export to Sprig",
        description="Forward Segment messages (one JSON object per line, as Segment's exports "
                    "write them; gzip-compressed data is recognised and read too) to Sprig "
                    "through SprigDestination's routing, mapping, coalescing and delivery. "
                    "Malformed lines are reported with their line numbers and skipped.",
    )
    replay.add_argument("file", metavar="FILE", help="JSON-lines file, or - for stdin")
    replay.add_argument("--dry-run", action="store_true",
                        help="print the requests that would be sent (stdout), send nothing")
    replay.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress display (it is off anyway when stderr is not a "
                             "terminal)")
    replay.add_argument("--max-requests-per-second", type=_positive_float, metavar="R",
                        help="pace requests to Sprig (its documented limit is 1000 per 5 "
                             "minutes per key, about 3.3 per second; default: no pacing)")
    replay.add_argument("--strict", action="store_true",
                        help="exit 1 when there was a malformed line")
    replay.set_defaults(func=_replay.run)

    purge = commands.add_parser(
        "purge", parents=[common, sprig], help="delete visitors from Sprig (privacy requests)",
        description="Delete visitors via POST /v2/purge/visitors, 100 per request. Prints one "
                    "request id per request.",
    )
    purge.add_argument("--user-id", action="append", metavar="ID", help="a user id (repeatable)")
    purge.add_argument("--email", action="append", metavar="EMAIL", help="an email (repeatable)")
    purge.add_argument("--ids-file", action="append", metavar="PATH",
                       help="file with one user id per line (- for stdin)")
    purge.add_argument("--emails-file", action="append", metavar="PATH",
                       help="file with one email per line (- for stdin)")
    purge.add_argument("--delay-seconds", type=_non_negative_int, metavar="N",
                       help="delete after N seconds (default: Sprig's, 10 days)")
    purge.set_defaults(func=_purge.run)

    spool = commands.add_parser(
        "spool", help="show or send what a destination's spool file holds",
        description="SprigDestination(spool=PATH) keeps what it could not deliver in a SQLite "
                    "file. 'status' shows what it holds, 'drain' sends it now.",
    )
    spool_actions = spool.add_subparsers(dest="spool_action", metavar="ACTION")
    spool.set_defaults(func=lambda args, parser=spool: _spool.run_no_action(parser),
                       verbose=0)
    status = spool_actions.add_parser(
        "status", parents=[common], help="rows, bytes and age of what a spool holds",
        description="Show what a spool file holds: rows (and the messages in them), stored "
                    "bytes, rows claimed by a process sending them, the age of the oldest "
                    "row. Reads the file without changing it; a missing file is not created.",
    )
    status.add_argument("path", metavar="PATH", help="the spool file")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=_spool.run_status)
    drain = spool_actions.add_parser(
        "drain", parents=[common, sprig], help="send what a spool holds now",
        description="Send what a spool file holds to Sprig now, oldest first, through "
                    "SprigDestination (the same claims, retries and per-user order as the "
                    "app; other processes may use the file meanwhile), then print a summary. "
                    "One GET /v2/users request checks the API key first.",
    )
    drain.add_argument("path", metavar="PATH", help="the spool file")
    drain.add_argument("--no-progress", dest="progress", action="store_false",
                       help="no progress display (it is off anyway when stderr is not a "
                            "terminal)")
    drain.add_argument("--max-requests-per-second", type=_positive_float, metavar="R",
                       help="pace requests to Sprig (default: no pacing)")
    drain.set_defaults(func=_spool.run_drain)

    serve = commands.add_parser(
        "serve-fake", parents=[common], help="run the local fake Sprig server",
        description="Run the fake Sprig API (and Segment's /v1/batch) in the foreground; "
                    "prints its URL, the simulated conditions, then one line per request. "
                    "It can simulate distance (--latency, --jitter) and Sprig's rate limit "
                    "(--rate-limit: a token bucket per API key answering 429 "
                    "{\"error\": \"Too Many Requests\"}, with Retry-After only if "
                    "--retry-after is given). Ctrl-C or SIGTERM stops it.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8765,
                       help="port (default: 8765; 0 picks a free one)")
    serve.add_argument("--api-key", metavar="KEY",
                       help="require this key in the Authorization header (default: any key)")
    serve.add_argument("--latency", type=_seconds, default=0.0, metavar="SECONDS",
                       help="answer every request (Sprig's and Segment's) SECONDS after it "
                            "arrives, like a server that far away; connections are served "
                            "in parallel (default: 0)")
    serve.add_argument("--jitter", type=_seconds, default=0.0, metavar="SECONDS",
                       help="vary each request's latency by a uniform +/- SECONDS, at most "
                            "--latency (default: 0)")
    serve.add_argument("--rate-limit", type=_positive_float, metavar="R",
                       help="allow R requests/s per API key on /v2 (a token bucket); beyond "
                            "it, answer 429 (default: no limit; Segment's /v1/batch is never "
                            "limited)")
    serve.add_argument("--rate-limit-burst", type=_burst, metavar="N",
                       help="requests the bucket holds, for bursts (default: one second's "
                            "worth, R, at least 1)")
    serve.add_argument("--retry-after", type=_non_negative_int, metavar="N",
                       help="send Retry-After: N (seconds) with each 429 (default: no "
                            "Retry-After header)")
    serve.set_defaults(func=_cmd_serve_fake)
    return parser


@contextlib.contextmanager
def _logging(verbosity: int) -> Iterator[None]:
    """Show the library's log on stderr for the command's duration (errors only, by default).

    The library itself only logs to the ``analytics_sprig`` logger (with a NullHandler); the
    command line is an application, so it adds its own stderr handler.
    """
    logger = logging.getLogger("analytics_sprig")
    level = logging.ERROR if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    if verbosity >= 1:
        logger.setLevel(level)  # the logger's own level would otherwise stop INFO and DEBUG
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``analytics-sprig`` command; return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    with _logging(args.verbose):
        try:
            return int(args.func(args))
        except UsageError as exc:
            _err(str(exc))
            return EXIT_USAGE
        except ConfigurationError as exc:
            _err(str(exc))
            return EXIT_USAGE
        except SprigError as exc:
            _err(str(exc))
            return EXIT_FAILED
        except KeyboardInterrupt:
            _note("interrupted")
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            # The reader went away (`... | head`); silence the flush at exit.
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            return EXIT_FAILED
        except Exception as exc:
            # A bug, not an input problem: still one line, with the traceback only on -vv.
            logging.getLogger("analytics_sprig").debug("internal error", exc_info=True)
            _err(f"internal error: {type(exc).__name__}: {exc} (run with -vv for the "
                 "traceback, and please report it)")
            return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
