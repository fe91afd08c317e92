"""User-facing errors: one clear line, a non-zero exit, never a traceback wall."""
from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

EXIT_USAGE = 2


class NstjaxError(Exception):
    """A problem with the user's input or settings. The message is shown as one line."""


def cli_errors(fn: F) -> F:
    """Turn NstjaxError (and Ctrl-C) raised inside a CLI entry point into one line + exit code.

    SystemExit is a BaseException, so it passes through Hydra's own exception reporting.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NstjaxError as e:
            print(f"nstjax: error: {e}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            print("nstjax: interrupted", file=sys.stderr, flush=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
