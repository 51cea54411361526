"""The one exception type for mistakes a user can make and fix.

Entry points (`train.py`, `evaluate.py`, `predict.py`, `python -m ...`) catch it and print
its message as a single sentence without a traceback; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class StrokeSegError(Exception):
    """A user-fixable problem: the message names the file or config key and what to do."""


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a StrokeSegError into `error: <message>` on stderr and exit status 2."""
    try:
        yield
    except StrokeSegError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
