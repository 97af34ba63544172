"""A suite fixture's opener that closes whatever it opened when the test ends."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def closing_all(opener: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """``opener`` wrapped: each object it returns is closed on exit (already closed or lost
    ones are fine)."""
    opened: list = []

    def open_one(*args, **kwargs):
        obj = opener(*args, **kwargs)
        opened.append(obj)
        return obj

    try:
        yield open_one
    finally:
        for obj in opened:
            with contextlib.suppress(Exception):
                obj.close()
