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


def user_error_in(err: BaseException) -> StrokeSegError | None:
    """The StrokeSegError that ``err`` is or was raised from, if any.

    Libraries re-raise what fails inside them under their own type (Hydra's
    ``InstantiationException`` for a constructor called by ``instantiate``, MONAI's
    ``RuntimeError("applying transform ...")``); the user's mistake is in the chain.
    """
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, StrokeSegError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


@contextmanager
def exit_on_user_error() -> Iterator[None]:
    """Turn a StrokeSegError, also one wrapped by a library, into `error: <message>` on
    stderr and exit status 2."""
    try:
        yield
    except Exception as err:
        user_error = user_error_in(err)
        if user_error is None:
            raise
        print(f"error: {user_error}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
