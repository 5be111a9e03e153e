"""The ``analytics-sprig`` command line (also ``python -m analytics_sprig``).

Commands:

- ``demo``: a realistic session through analytics-python and :class:`SprigDestination`,
  against local fakes of Segment's and Sprig's APIs; prints both sides next to each other.
- ``replay FILE``: forward Segment messages from a JSON-lines export to Sprig, through the
  destination's routing, mapping, coalescing and delivery (``--dry-run`` prints instead).
- ``purge``: privacy deletion of visitors by user id or email.
- ``serve-fake``: run the local fake Sprig server in the foreground.

Exit codes: 0 success; 1 something failed (messages failed or dropped, a purge request
failed, the API key was rejected); 2 usage error (bad option, missing API key, invalid
endpoint, unreadable file); 130 interrupted. The API key is never printed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import textwrap
import threading
from types import FrameType
from typing import Any, Iterator, List, Optional, Sequence

from .._errors import ConfigurationError, SprigAuthError, SprigError
from .._version import __version__
from ..sprig._api import DEFAULT_ENDPOINT, purge_chunks, validate_endpoint
from ..sprig._destination import SprigDestination
from ..testing import fake_server
from ._demo import (
    DEMO_USER,
    NEW_USER,
    DemoResult,
    print_report,
    render_report,
    run_session,
    terminal_width,
)
from ._replay import (
    UsageError,
    _make_progress,
    _open_input,
    _plural,
    _Replay,
    _replay_dry,
    _replay_live,
    _replay_summary,
)

__all__ = ["main", "print_report"]

PROG = "analytics-sprig"
API_KEY_ENV = "SPRIG_API_KEY"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

def _err(text: str) -> None:
    print(f"{PROG}: error: {text}", file=sys.stderr)


def _note(text: str) -> None:
    print(text, file=sys.stderr)


def _api_key(given: Optional[str], *, required: bool = True) -> Optional[str]:
    key = given or os.environ.get(API_KEY_ENV) or None
    if key is None and required:
        raise UsageError(f"no Sprig API key: pass --api-key or set {API_KEY_ENV}")
    return key


# -- demo -----------------------------------------------------------------------------------


def _ask_real_sprig(endpoint: str) -> bool:
    sys.stderr.write(
        f"{API_KEY_ENV} is set. Send the demo session to your real Sprig environment "
        f"({endpoint}) instead of the local fake?\n"
        f"It creates the demo visitors {DEMO_USER} and {NEW_USER} there. [y/N] "
    )
    sys.stderr.flush()
    try:
        answer = sys.stdin.readline()
    except (EOFError, KeyboardInterrupt, OSError):
        return False
    return answer.strip().lower() in ("y", "yes")


def _cmd_demo(args: argparse.Namespace) -> int:
    endpoint = validate_endpoint(args.endpoint)
    real_key: Optional[str] = None
    env_key = os.environ.get(API_KEY_ENV)
    if env_key:
        if sys.stdin is not None and sys.stdin.isatty():
            if _ask_real_sprig(endpoint):
                real_key = env_key
        else:
            _note(f"{API_KEY_ENV} is set: run `{PROG} demo` in an interactive terminal to be "
                  "offered to send the demo to your real Sprig environment. Using the local "
                  "fake.")
    result: DemoResult = run_session(real_key, endpoint=endpoint)
    if args.json:
        print(json.dumps(result.as_json(), indent=2, ensure_ascii=False))
    else:
        if real_key:
            intro = ("analytics-sprig demo: the session went through analytics-python with "
                     "SprigDestination. Segment's API is a local fake; Sprig's is "
                     f"{endpoint}.")
            label = "What was sent to Sprig"
        else:
            intro = ("analytics-sprig demo: the session went through analytics-python with "
                     "SprigDestination. Segment's and Sprig's APIs are local fakes on "
                     "127.0.0.1: no account needed, nothing left this machine.")
            label = "What Sprig received"
        width = terminal_width()
        print("\n".join(textwrap.wrap(intro, max(40, min(width, 120)))))
        print()
        sys.stdout.write(render_report(result.segment_messages, result.sprig_requests,
                                       result.stats, width=width,
                                       layout=args.layout, sprig_label=label))
        if real_key:
            extra = "" if endpoint == DEFAULT_ENDPOINT else f" --endpoint {endpoint}"
            print(f"\nTo delete the demo visitors from Sprig: {PROG} purge "
                  f"--user-id {DEMO_USER} --user-id {NEW_USER} --delay-seconds 0{extra}")
    sys.stdout.flush()
    failed = result.stats.get("failed", 0) + result.stats.get("dropped", 0)
    if failed:
        _err(f"{failed} message(s) did not reach Sprig (see the stats above)")
        return EXIT_FAILED
    return EXIT_OK


# -- replay ---------------------------------------------------------------------------------


def _cmd_replay(args: argparse.Namespace) -> int:
    args.endpoint = validate_endpoint(args.endpoint)
    api_key = None if args.dry_run else _api_key(args.api_key)  # fail before reading anything
    state = _Replay()
    with _open_input(args.file) as (stream, size):
        progress = _make_progress(args.progress, size)
        try:
            if args.dry_run:
                _note(f"Dry run: the requests below would go to {args.endpoint}; nothing is "
                      "sent.")
                stats = _replay_dry(state, stream, progress)
            else:
                assert api_key is not None
                stats = _replay_live(state, stream, progress, api_key=api_key,
                                     endpoint=args.endpoint, max_retries=args.max_retries,
                                     max_requests_per_second=args.max_requests_per_second)
        finally:
            progress.close()
    summary = "\n".join(_replay_summary(state, stats, args.dry_run))
    # With --dry-run stdout carries only the requests, so the summary goes to stderr.
    print(summary, file=sys.stderr if args.dry_run else sys.stdout)
    if state.interrupted:
        return EXIT_INTERRUPTED
    if state.auth_failed.is_set():
        _err(f"Sprig rejected the API key; check --api-key or {API_KEY_ENV}")
        return EXIT_FAILED
    if stats.get("failed", 0) or stats.get("dropped", 0):
        return EXIT_FAILED
    if args.strict and state.malformed:
        return EXIT_FAILED
    return EXIT_OK


# -- purge ----------------------------------------------------------------------------------


def _read_list(path: str) -> List[str]:
    """One value per line; blank lines and ``#`` comments are ignored; ``-`` is stdin."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8-sig") as handle:
                text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise UsageError(f"cannot read {path}: {reason}") from None
    values = []
    for line in text.splitlines():
        value = line.strip()
        if value and not value.startswith("#"):
            values.append(value)
    return values


def _unique(values: Sequence[str]) -> List[str]:
    return list(dict.fromkeys(values))


def _cmd_purge(args: argparse.Namespace) -> int:
    user_ids = list(args.user_id or [])
    emails = list(args.email or [])
    for path in args.ids_file or []:
        user_ids.extend(_read_list(path))
    for path in args.emails_file or []:
        emails.extend(_read_list(path))
    user_ids, emails = _unique(user_ids), _unique(emails)
    if not user_ids and not emails:
        raise UsageError("nothing to purge: give --user-id, --email, --ids-file or "
                         "--emails-file")
    api_key = _api_key(args.api_key)
    assert api_key is not None
    destination = SprigDestination(api_key, endpoint=args.endpoint, max_retries=args.max_retries)
    chunks = purge_chunks(user_ids, emails)
    request_ids: List[str] = []
    try:
        for index, chunk in enumerate(chunks, 1):
            count = sum(len(values) for values in chunk.values())
            try:
                got = destination.purge(
                    user_ids=chunk.get("userIds", []),
                    emails=chunk.get("emails", []),
                    delay_seconds=args.delay_seconds,
                )
            except SprigError as exc:
                done = sum(sum(len(v) for v in c.values()) for c in chunks[: index - 1])
                hint = ""
                if isinstance(exc, SprigAuthError):
                    hint = (" (the API key is wrong or revoked, or belongs to another Sprig "
                            "environment)")
                _err(f"purge request {index}/{len(chunks)} failed: {exc}{hint}")
                if index > 1:
                    _note(f"{index - 1} earlier request(s) for {done} visitors were accepted "
                          "(request ids above); re-running the same purge is safe.")
                return EXIT_FAILED
            request_id = got[0] if got else "(none given)"
            request_ids.extend(got)
            print(f"request {index}/{len(chunks)}: {count} visitors -> request id {request_id}")
            sys.stdout.flush()
    finally:
        destination.shutdown(timeout=1.0)
    when = ("its default delay (10 days)" if args.delay_seconds is None
            else _plural(args.delay_seconds, "second"))
    print(f"Submitted {_plural(len(user_ids), 'user id')} and {_plural(len(emails), 'email')} "
          f"in {_plural(len(chunks), 'request')}; Sprig deletes them after {when}.")
    return EXIT_OK


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``analytics-sprig`` command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v: warnings and retries, -vv: debug)")

    sprig = argparse.ArgumentParser(add_help=False)
    sprig.add_argument("--api-key", metavar="KEY",
                       help=f"Sprig API key (default: ${API_KEY_ENV}; prefer the variable, "
                            "command lines are visible to other users)")
    sprig.add_argument("--endpoint", default=DEFAULT_ENDPOINT, metavar="URL",
                       help=f"Sprig API base URL (default: {DEFAULT_ENDPOINT})")
    sprig.add_argument("--max-retries", type=_non_negative_int, default=10, metavar="N",
                       help="retries per request on 408/429/5xx/network errors (default: 10)")

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Tools for analytics-sprig: a demo, replaying Segment exports to Sprig, "
                    "privacy purges, and a local fake Sprig server.",
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
                      help="side by side, or one after the other (default: by terminal width)")
    demo.set_defaults(func=_cmd_demo)

    replay = commands.add_parser(
        "replay", parents=[common, sprig], help="forward a JSON-lines Segment export to Sprig",
        description="Forward Segment messages (one JSON object per line, as Segment's exports "
                    "write them; .gz files are read too) to Sprig through SprigDestination's "
                    "routing, mapping, coalescing and delivery. Malformed lines are reported "
                    "with their line numbers and skipped.",
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
                        help="exit 1 when there were malformed lines")
    replay.set_defaults(func=_cmd_replay)

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
    purge.set_defaults(func=_cmd_purge)

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
    """Show the library's log on stderr for the command's duration (errors only, by default)."""
    logger = logging.getLogger("analytics_sprig")
    level = logging.ERROR if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    if verbosity >= 2:
        logger.setLevel(logging.DEBUG)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
