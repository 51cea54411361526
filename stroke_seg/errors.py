"""The one exception type for mistakes a user can make and fix, and the checks that raise it.

Entry points (`train.py`, `evaluate.py`, `predict.py`, the ``stroke-seg-*`` commands) catch
it and print its message as a single sentence without a traceback; anything else is a bug
and keeps its traceback.

Library code names its own parameters (``sampling='middle' is not known``), not the config
tree: only the task functions know that the parameter is ``data.sampling``. They wrap the
library call in `config_section` ("data"), which prefixes the key of every `StrokeSegError`
raised inside with ``data.``, so the user still reads the key to change.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any


class StrokeSegError(Exception):
    """A user-fixable problem: the message names the file or config key and what to do.

    With `key`, the message starts with ``key=value`` as written by `option_error`;
    `config_section` rewrites that key to its full config path.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key

    def under(self, section: str) -> StrokeSegError:
        """The same error with its key placed under config `section` (``data`` + ``sampling``
        -> ``data.sampling``); an error without a key is returned unchanged."""
        if self.key is None or not section:
            return self
        message = str(self)
        if message.startswith(f"{self.key}="):
            message = f"{section}.{message}"
        return StrokeSegError(message, key=f"{section}.{self.key}")


def option_error(key: str, value: Any, problem: str) -> StrokeSegError:
    """``StrokeSegError("key=value <problem>", key=key)``: the one shape of a bad-option error."""
    return StrokeSegError(f"{key}={value!r} {problem}", key=key)


def check_choice(key: str, value: Any, allowed: Iterable[Any]) -> Any:
    """`value` if it is one of `allowed`, else one sentence naming the key and the choices."""
    choices = list(allowed)
    if value not in choices:
        raise option_error(key, value, f"is not known; use one of {', '.join(map(str, choices))}.")
    return value


def check_keys(
    options: Mapping[str, Any],
    known: Sequence[str],
    what: str,
    missing_hint: str,
    prefix: str = "",
    required: bool = True,
) -> None:
    """Refuse an option group with a key that is not in `known` (``<prefix><key>=value is not
    <what>; use ...``) or, if `required`, one that lacks a known key or leaves it null
    (``<prefix><key>= is missing; <missing_hint>``): the defaults of such a group live in one
    yaml file only, so a missing key is a mistake, not a fallback."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise option_error(key, options[unknown[0]], f"is not {what}; use {', '.join(known)}.")
    missing = [k for k in known if options.get(k) is None] if required else []
    if missing:
        key = f"{prefix}{missing[0]}"
        raise StrokeSegError(f"{key}= is missing; {missing_hint}", key=key)


def check_range(
    key: str, value: float, low: float, high: float, *, high_open: bool = False
) -> float:
    """`value` if ``low <= value <= high`` (``< high`` with `high_open`), else one sentence."""
    value = float(value)
    inside = low <= value < high if high_open else low <= value <= high
    if not inside:
        bracket = ")" if high_open else "]"
        raise option_error(key, value, f"must lie in [{low:g}, {high:g}{bracket}.")
    return value


@contextmanager
def config_section(section: str) -> Iterator[None]:
    """Re-raise a `StrokeSegError` raised inside (also one wrapped by a library, e.g. by Hydra's
    ``instantiate``) with its key under config `section`: the boundary between library code,
    which knows its parameters, and the task, which knows where they live in the config."""
    try:
        yield
    except Exception as err:
        user_error = user_error_in(err)
        if user_error is None:
            raise
        raise user_error.under(section) from None


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
